//! The upstreams' prompts and resources. Prompts are advertised like tools
//! (`<upstream>__<prompt>`); resources keep their URIs (a URI two upstreams both list is served
//! by neither, and logged), and are decided on under the name `<upstream>__<resource name>`, so
//! that one rule (`crm__*`) covers an upstream's tools, prompts and resources alike.

use std::collections::HashMap;
use std::sync::PoisonError;

use rmcp::ErrorData;
use rmcp::model::{
    GetPromptRequestParams, GetPromptResponse, Prompt, ReadResourceRequestParams,
    ReadResourceResponse, Resource,
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
        self.relist_resources(caller, true).await
    }

    async fn relist_resources(&self, caller: &Caller, force: bool) -> Vec<(Resource, String)> {
        let lists =
            futures::future::join_all(self.links.iter().map(|l| l.list_resources(caller, force)));
        let mut fresh: Vec<(usize, Vec<Resource>)> = Vec::new();
        for (i, (link, list)) in self.links.iter().zip(lists.await).enumerate() {
            match list {
                Ok(Some(resources)) => fresh.push((i, resources)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(upstream = %link.upstream.name, error = %e.message, "upstream resources not listed");
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
        for (i, resources) in fresh {
            for r in resources {
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
        all
    }

    /// Which upstream serves `uri`, listing the resources again first if it is not known
    /// (each caller's session at most every [`super::RELIST_AFTER`]).
    pub async fn find_resource(&self, caller: &Caller, uri: &str) -> Option<ResourceRef> {
        let known = |g: &Self| {
            g.resources
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(uri)
                .cloned()
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

    /// The upstream's resources; `None` when not forced and this caller's session listed them
    /// less than [`super::RELIST_AFTER`] ago.
    async fn list_resources(
        &self,
        caller: &Caller,
        force: bool,
    ) -> Result<Option<Vec<Resource>>, ErrorData> {
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
            return Ok(Some(Vec::new()));
        }
        let listing = session.service.peer().list_all_resources();
        self.ask(&in_use, &session, "no list of resources in time", listing)
            .await
            .map(Some)
    }
}

/// Keeps the type named where the gateway is built.
pub(super) type Owners = HashMap<String, ResourceRef>;
