//! The upstreams' prompts and resources. Prompts are advertised like tools
//! (`<upstream>__<prompt>`); resources keep their URIs (a URI two upstreams both list is served
//! by neither, and logged), and are decided on under the name `<upstream>__<resource name>`, so
//! that one rule (`crm__*`) covers an upstream's tools, prompts and resources alike.
//!
//! Resource templates (RFC 6570 URI templates) are passed on unchanged. A read is decided on
//! under every name that could produce its URI: the listed resource's and each template's that
//! can expand to it ([`uri_template`](super::uri_template)); all must be one upstream's, and
//! each must be allowed, so that no spelling of a URI chooses a more lenient rule or another
//! upstream.

use std::collections::HashMap;
use std::sync::PoisonError;

use rmcp::ErrorData;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResponse, Prompt, ReadResourceRequestParams,
    ReadResourceResponse, Resource, ResourceTemplate,
};

use super::names::{Catalog, advertised};
use super::uri_template::{UriTemplate, normalize};
use super::{Caller, Gateway, Link, Named, Routed, Session};

/// An upstream's resource as the gateway serves it: where it lives, and the names the access
/// rules decide it on.
#[derive(Debug, Clone)]
pub struct ResourceRef {
    link: usize,
    /// `<upstream>__<name>` of the listed resource and of every template that can produce its
    /// URI: each must be allowed (never empty).
    pub names: Vec<String>,
}

impl Gateway {
    /// Every upstream's prompts, under advertised names (unreachable upstreams left out).
    pub async fn list_prompts(&self, caller: &Caller) -> Vec<Prompt> {
        let lists = futures::future::join_all(self.links.iter().map(|l| l.list_prompts(caller)));
        let mut all = Vec::new();
        for (link, list) in self.links.iter().zip(lists.await) {
            match list {
                Ok(prompts) => all.extend(prompts),
                Err(e) => {
                    tracing::warn!(upstream = %link.upstream.name, error = %e.message, "upstream prompts not listed");
                }
            }
        }
        all
    }

    /// Gets the prompt `request.name` (advertised) from its upstream. `Ok(None)`: no such
    /// prompt.
    pub async fn get_prompt(
        &self,
        caller: &Caller,
        mut request: GetPromptRequestParams,
    ) -> Result<Option<(GetPromptResponse, Routed)>, ErrorData> {
        request.meta = super::hop_meta(request.meta);
        let Some(link) = self.link_of(&request.name) else {
            return Ok(None);
        };
        let Some(original) = link.resolve(caller, Named::Prompts, &request.name).await? else {
            return Ok(None);
        };
        let routed = Routed {
            upstream: link.upstream.name.clone(),
            tool: original.clone(),
        };
        request.name = original;
        let (in_use, session) = link.session(caller).await?;
        let get = session.service.peer().get_prompt_once(request);
        let response = link
            .ask(&in_use, &session, "no prompt in time", get)
            .await?;
        Ok(Some((response, routed)))
    }

    /// Every upstream's resources with the name each is decided on; URIs two upstreams share
    /// are left out. The owners of URIs are kept for reading: an upstream's entries are
    /// replaced by its new listing, and kept while it cannot be reached.
    pub async fn list_resources(&self, caller: &Caller) -> Vec<(Resource, String)> {
        self.relist_resources(caller, true).await.0
    }

    /// Every upstream's resource templates with the name each is decided on.
    pub async fn list_resource_templates(
        &self,
        caller: &Caller,
    ) -> Vec<(ResourceTemplate, String)> {
        self.relist_resources(caller, true).await.1
    }

    async fn relist_resources(
        &self,
        caller: &Caller,
        force: bool,
    ) -> (Vec<(Resource, String)>, Vec<(ResourceTemplate, String)>) {
        let lists =
            futures::future::join_all(self.links.iter().map(|l| l.list_resources(caller, force)));
        let mut fresh: Vec<(usize, Listing)> = Vec::new();
        for (i, (link, list)) in self.links.iter().zip(lists.await).enumerate() {
            match list {
                Ok(Some(listing)) => fresh.push((i, listing)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(upstream = %link.upstream.name, error = %e.message, "upstream resources not listed");
                }
            }
        }
        let mut templates = Vec::new();
        {
            let mut known = self
                .templates
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            known.retain(|t| !fresh.iter().any(|(i, _)| *i == t.at.link));
            for (i, listing) in &fresh {
                let Some(link) = self.links.get(*i) else {
                    continue;
                };
                for template in &listing.templates {
                    let name = advertised(&link.upstream.name, &template.name, self.max_name_len);
                    match UriTemplate::parse(&template.uri_template) {
                        Some(matcher) => {
                            known.push(TemplateRef {
                                matcher,
                                at: ResourceRef {
                                    link: *i,
                                    names: vec![name.clone()],
                                },
                            });
                            templates.push((template.clone(), name));
                        }
                        None => {
                            tracing::warn!(upstream = %link.upstream.name, template = %template.uri_template, "a resource template that is malformed, or would claim URIs of every scheme, is not served")
                        }
                    }
                }
            }
        }
        let mut owners = self
            .resources
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        owners.retain(|_, at| !fresh.iter().any(|(i, _)| *i == at.link));
        let mut listed: HashMap<String, (usize, Resource)> = HashMap::new();
        let mut shared: Vec<String> = Vec::new();
        for (i, listing) in fresh {
            for r in listing.resources {
                let elsewhere = owners.get(&r.uri).is_some_and(|at| at.link != i)
                    || listed.get(&r.uri).is_some_and(|(j, _)| *j != i);
                if elsewhere {
                    shared.push(r.uri.clone());
                }
                listed.insert(r.uri.clone(), (i, r));
            }
        }
        for uri in &shared {
            tracing::error!(uri = %uri, "a resource URI several upstreams list is served by none");
            listed.remove(uri);
            owners.remove(uri);
        }
        let mut all = Vec::new();
        for (uri, (i, resource)) in listed {
            let Some(link) = self.links.get(i) else {
                continue;
            };
            let name = advertised(&link.upstream.name, &resource.name, self.max_name_len);
            owners.insert(
                uri,
                ResourceRef {
                    link: i,
                    names: vec![name.clone()],
                },
            );
            all.push((resource, name));
        }
        all.sort_by(|a, b| a.0.uri.cmp(&b.0.uri));
        templates.sort_by(|a, b| a.0.uri_template.cmp(&b.0.uri_template));
        (all, templates)
    }

    /// Which upstream serves `uri`, and the names it is decided on: the listed resource's and
    /// every matching template's. Listing again first if none is known (each caller's session
    /// at most every [`super::RELIST_AFTER`]).
    pub async fn find_resource(&self, caller: &Caller, uri: &str) -> Option<ResourceRef> {
        let known = |g: &Self| {
            route(
                &g.resources.read().unwrap_or_else(PoisonError::into_inner),
                &g.templates.read().unwrap_or_else(PoisonError::into_inner),
                uri,
            )
        };
        if let Some(found) = known(self) {
            return Some(found);
        }
        self.relist_resources(caller, false).await;
        known(self)
    }

    /// Reads `request.uri` at the upstream `at` names.
    pub async fn read_resource(
        &self,
        caller: &Caller,
        at: &ResourceRef,
        request: ReadResourceRequestParams,
    ) -> Result<(ReadResourceResponse, Routed), ErrorData> {
        let Some(link) = self.links.get(at.link) else {
            return Err(ErrorData::resource_not_found("resource not found", None));
        };
        let routed = Routed {
            upstream: link.upstream.name.clone(),
            tool: request.uri.clone(),
        };
        let mut request = request;
        request.meta = super::hop_meta(request.meta);
        let (in_use, session) = link.session(caller).await?;
        let read = session.service.peer().read_resource_once(request);
        let response = link
            .ask(&in_use, &session, "no resource in time", read)
            .await?;
        Ok((response, routed))
    }
}

impl Link {
    /// Whether the upstream said, when initialized, that it has `what`.
    fn offers(
        session: &super::Session,
        what: fn(&rmcp::model::ServerCapabilities) -> bool,
    ) -> bool {
        session
            .service
            .peer()
            .peer_info()
            .is_some_and(|info| what(&info.capabilities))
    }

    pub(super) async fn list_prompts(&self, caller: &Caller) -> Result<Vec<Prompt>, ErrorData> {
        let (in_use, session) = self.session(caller).await?;
        if !Self::offers(&session, |c| c.prompts.is_some()) {
            return Ok(Vec::new());
        }
        let listing = session.service.peer().list_all_prompts();
        let prompts = self
            .ask(&in_use, &session, "no list of prompts in time", listing)
            .await?;
        let (catalog, shown) = Catalog::advertise(
            &self.upstream.name,
            &prompts,
            |p| p.name.as_str(),
            |p, name| p.name = name,
            self.max_name_len,
        );
        Session::remember(&session.prompts, catalog);
        Ok(shown)
    }

    /// The upstream's resources and resource templates; `None` when not forced and this
    /// caller's session listed them less than [`super::RELIST_AFTER`] ago.
    async fn list_resources(
        &self,
        caller: &Caller,
        force: bool,
    ) -> Result<Option<Listing>, ErrorData> {
        let (in_use, session) = self.session(caller).await?;
        {
            let mut last = session
                .resources_listed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !force && last.is_some_and(|at| at.elapsed() < super::RELIST_AFTER) {
                return Ok(None);
            }
            *last = Some(std::time::Instant::now());
        }
        if !Self::offers(&session, |c| c.resources.is_some()) {
            return Ok(Some(Listing::default()));
        }
        let peer = session.service.peer();
        let (resources, templates) = futures::future::join(
            self.ask(
                &in_use,
                &session,
                "no list of resources in time",
                peer.list_all_resources(),
            ),
            self.ask(
                &in_use,
                &session,
                "no list of resource templates in time",
                peer.list_all_resource_templates(),
            ),
        )
        .await;
        // Templates that cannot be listed (an upstream that does not know the method, or fails
        // at it) leave the resources listed.
        let templates = templates.unwrap_or_else(|e| {
            if e.code != rmcp::model::ErrorCode::METHOD_NOT_FOUND {
                tracing::warn!(upstream = %self.upstream.name, error = %e.message, "upstream resource templates not listed");
            }
            Vec::new()
        });
        Ok(Some(Listing {
            resources: resources?,
            templates,
        }))
    }
}

/// One upstream's resources and resource templates.
#[derive(Debug, Default)]
struct Listing {
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
}

/// A resource template as the gateway routes by it.
#[derive(Debug, Clone)]
pub(super) struct TemplateRef {
    matcher: UriTemplate,
    at: ResourceRef,
}

/// Where `uri` is read and under which names it is decided on: the listed resource of that URI
/// (compared as given and with percent-encoded unreserved characters decoded) and every
/// template that can produce it. All of them must be one upstream's, else none serves it (and
/// it is logged): otherwise the spelling of a URI would choose the rule or the upstream.
fn route(owners: &Owners, templates: &[TemplateRef], uri: &str) -> Option<ResourceRef> {
    let normal = normalize(uri);
    let listed = owners.get(uri).or_else(|| owners.get(normal.as_ref()));
    let claims = templates
        .iter()
        .filter(|t| t.matcher.matches(uri) || t.matcher.matches(&normal))
        .map(|t| &t.at);
    let mut found: Option<ResourceRef> = None;
    for at in listed.into_iter().chain(claims) {
        match &mut found {
            None => found = Some(at.clone()),
            Some(f) if f.link == at.link => {
                for name in &at.names {
                    if !f.names.contains(name) {
                        f.names.push(name.clone());
                    }
                }
            }
            Some(_) => {
                tracing::error!(uri = %uri, "a resource URI several upstreams list or claim with templates is served by none");
                return None;
            }
        }
    }
    found
}

/// Keeps the type named where the gateway is built.
pub(super) type Owners = HashMap<String, ResourceRef>;

#[cfg(test)]
mod tests {
    use super::*;

    fn template(t: &str, link: usize, name: &str) -> TemplateRef {
        TemplateRef {
            matcher: UriTemplate::parse(t).expect("template"),
            at: ResourceRef {
                link,
                names: vec![name.to_owned()],
            },
        }
    }

    #[test]
    fn a_uri_is_decided_on_under_every_name_that_can_produce_it_and_served_by_one_upstream() {
        let templates = [
            template("crm://customers/{id}", 0, "crm__customer"),
            template("crm://customers/{id}/notes", 0, "crm__notes"),
            template("crm://customers/{id}{?fields}", 0, "crm__customer_fields"),
            template("demo://resource/dynamic/text/{id}", 1, "demo__text"),
            template("demo://resource/{+path}", 2, "other__any"),
        ];
        let mut owners = Owners::new();
        owners.insert(
            "crm://customers/vip".to_owned(),
            ResourceRef {
                link: 0,
                names: vec!["crm__vip".to_owned()],
            },
        );
        let at = |uri| route(&owners, &templates, uri).map(|r| (r.link, r.names));
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            at("crm://customers/9/notes"),
            Some((0, names(&["crm__notes"])))
        );
        assert_eq!(
            at("crm://customers/9"),
            Some((0, names(&["crm__customer", "crm__customer_fields"])))
        );
        // The listed resource's own rule applies whatever the spelling, with the templates'.
        let vip = Some((
            0,
            names(&["crm__vip", "crm__customer", "crm__customer_fields"]),
        ));
        assert_eq!(at("crm://customers/vip"), vip);
        assert_eq!(at("crm://customers/%76ip"), vip);
        // Two upstreams could produce it: neither serves it.
        assert_eq!(at("demo://resource/dynamic/text/3"), None);
        assert_eq!(
            at("demo://resource/elsewhere"),
            Some((2, names(&["other__any"])))
        );
        assert_eq!(at("elsewhere://x"), None);
    }
}
