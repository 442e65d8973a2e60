//! The upstreams' prompts and resources. Prompts are advertised like tools
//! (`<upstream>__<prompt>`); resources keep their URIs (a URI two upstreams both list is served
//! by neither, and logged), and are decided on under the name `<upstream>__<resource name>`, so
//! that one rule (`crm__*`) covers an upstream's tools, prompts and resources alike.
//!
//! Resource templates (RFC 6570 URI templates) are passed on unchanged. A URI no upstream lists
//! is read at the upstream whose template's literal beginning (up to its first expression) is
//! the longest one the URI starts with, and decided on under `<upstream>__<template name>`; a
//! URI two upstreams' templates claim equally is served by neither.

use std::collections::HashMap;
use std::sync::PoisonError;

use rmcp::ErrorData;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResponse, Prompt, ReadResourceRequestParams,
    ReadResourceResponse, Resource, ResourceTemplate,
};

use super::names::{Catalog, advertised};
use super::{Caller, Gateway, Link, Named, Routed, Session};

/// An upstream's resource as the gateway serves it: where it lives, and the name the access
/// rules see.
#[derive(Debug, Clone)]
pub struct ResourceRef {
    link: usize,
    /// `<upstream>__<resource name>`.
    pub name: String,
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
                    match TemplateRef::new(&template.uri_template, *i, name.clone()) {
                        Some(t) => known.push(t),
                        None => {
                            tracing::warn!(upstream = %link.upstream.name, template = %template.uri_template, "a resource template that would claim every URI is not served")
                        }
                    }
                    templates.push((template.clone(), name));
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
                    name: name.clone(),
                },
            );
            all.push((resource, name));
        }
        all.sort_by(|a, b| a.0.uri.cmp(&b.0.uri));
        templates.sort_by(|a, b| a.0.uri_template.cmp(&b.0.uri_template));
        (all, templates)
    }

    /// Which upstream serves `uri`: the one that lists it, else the one whose template claims
    /// it; listing again first if neither is known (each caller's session at most every
    /// [`super::RELIST_AFTER`]).
    pub async fn find_resource(&self, caller: &Caller, uri: &str) -> Option<ResourceRef> {
        let known = |g: &Self| {
            let listed = g
                .resources
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(uri)
                .cloned();
            listed.or_else(|| {
                TemplateRef::claim(
                    &g.templates.read().unwrap_or_else(PoisonError::into_inner),
                    uri,
                )
            })
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
        let templates = match templates {
            Ok(t) => t,
            // An upstream that has resources but no templates may not know the method.
            Err(e) if e.code == rmcp::model::ErrorCode::METHOD_NOT_FOUND => Vec::new(),
            Err(e) => return Err(e),
        };
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

/// A resource template as the gateway routes by it: the literal beginning of its URI template.
#[derive(Debug, Clone)]
pub(super) struct TemplateRef {
    /// Up to the template's first expression (the whole template if it has none).
    literal: String,
    /// Whether the template has an expression (else it names one URI).
    open: bool,
    at: ResourceRef,
}

impl TemplateRef {
    /// `None` for a template whose literal beginning has no scheme (`{+uri}` and the like),
    /// which would claim every URI.
    fn new(template: &str, link: usize, name: String) -> Option<Self> {
        let (literal, open) = match template.find('{') {
            Some(at) => (&template[..at], true),
            None => (template, false),
        };
        literal.contains(':').then(|| Self {
            literal: literal.to_owned(),
            open,
            at: ResourceRef { link, name },
        })
    }

    fn matches(&self, uri: &str) -> bool {
        if self.open {
            uri.len() > self.literal.len() && uri.starts_with(&self.literal)
        } else {
            uri == self.literal
        }
    }

    /// The template that claims `uri`: the longest literal beginning that matches, if only
    /// one upstream has it.
    fn claim(templates: &[Self], uri: &str) -> Option<ResourceRef> {
        let matching: Vec<&Self> = templates.iter().filter(|t| t.matches(uri)).collect();
        let longest = matching.iter().map(|t| t.literal.len()).max()?;
        let best: Vec<&&Self> = matching
            .iter()
            .filter(|t| t.literal.len() == longest)
            .collect();
        match best.as_slice() {
            [one] => Some(one.at.clone()),
            [first, rest @ ..] if rest.iter().all(|t| t.at.link == first.at.link) => {
                Some(first.at.clone())
            }
            _ => {
                tracing::error!(uri = %uri, "a resource URI several upstreams' templates claim is served by none");
                None
            }
        }
    }
}

/// Keeps the type named where the gateway is built.
pub(super) type Owners = HashMap<String, ResourceRef>;

#[cfg(test)]
mod tests {
    use super::*;

    fn template(t: &str, link: usize) -> TemplateRef {
        TemplateRef::new(t, link, format!("u{link}__t")).expect("template")
    }

    #[test]
    fn a_uri_goes_to_the_upstream_whose_template_claims_most_of_it() {
        let templates = [
            template("demo://resource/dynamic/text/{id}", 0),
            template("demo://resource/{path}", 1),
            template("crm://customers/{id}{?fields}", 2),
            template("crm://customers/{id}/notes", 3),
            template("fixed://one", 4),
        ];
        let at = |uri| TemplateRef::claim(&templates, uri).map(|r| r.link);
        assert_eq!(at("demo://resource/dynamic/text/7"), Some(0));
        assert_eq!(at("demo://resource/other"), Some(1));
        assert_eq!(
            at("demo://resource/"),
            None,
            "an expression matches something"
        );
        // Two upstreams' templates claim it equally: neither serves it.
        assert_eq!(at("crm://customers/9"), None);
        assert_eq!(at("fixed://one"), Some(4));
        assert_eq!(at("fixed://one/more"), None);
        assert_eq!(at("elsewhere://x"), None);
        assert!(TemplateRef::new("{+anything}", 0, "x".into()).is_none());
        assert!(TemplateRef::new("/{path}", 0, "x".into()).is_none());
    }
}
