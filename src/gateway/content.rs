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
use super::{Caller, Gateway, Link, Routed};

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
        let Some(link) = self.link_of(&request.name) else {
            return Ok(None);
        };
        let known = link.prompt_catalog().tools.get(&request.name).cloned();
        let original = match known {
            Some(original) => original,
            None => {
                link.list_prompts(caller).await?;
                match link.prompt_catalog().tools.get(&request.name).cloned() {
                    Some(original) => original,
                    None => return Ok(None),
                }
            }
        };
        let routed = Routed {
            upstream: link.upstream.name.clone(),
            tool: original.clone(),
        };
        request.name = original;
        let (slot, session) = link.session(caller).await?;
        let get = session.service.peer().get_prompt_once(request);
        match tokio::time::timeout(link.upstream.call_timeout, get).await {
            Ok(Ok(response)) => Ok(Some((response, routed))),
            Ok(Err(e)) => Err(link.failed_in(&slot, &session, e).await),
            Err(_) => Err(link.unavailable("no prompt in time")),
        }
    }

    /// Every upstream's resources with the name each is decided on; URIs two upstreams share
    /// are left out.
    pub async fn list_resources(&self, caller: &Caller) -> Vec<(Resource, String)> {
        let lists = futures::future::join_all(self.links.iter().map(|l| l.list_resources(caller)));
        let mut by_uri: HashMap<String, Vec<(usize, Resource)>> = HashMap::new();
        for (i, (link, list)) in self.links.iter().zip(lists.await).enumerate() {
            match list {
                Ok(resources) => {
                    for r in resources {
                        by_uri.entry(r.uri.clone()).or_default().push((i, r));
                    }
                }
                Err(e) => {
                    tracing::warn!(upstream = %link.upstream.name, error = %e.message, "upstream resources not listed");
                }
            }
        }
        let mut owners = HashMap::new();
        let mut all = Vec::new();
        for (uri, mut holders) in by_uri {
            if holders.len() > 1 {
                let names: Vec<&str> = holders
                    .iter()
                    .filter_map(|(i, _)| self.links.get(*i).map(|l| l.upstream.name.as_str()))
                    .collect();
                tracing::error!(uri = %uri, upstreams = ?names, "a resource URI several upstreams list is served by none");
                continue;
            }
            let Some((i, resource)) = holders.pop() else {
                continue;
            };
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
        *self
            .resources
            .write()
            .unwrap_or_else(PoisonError::into_inner) = owners;
        all.sort_by(|a, b| a.0.uri.cmp(&b.0.uri));
        all
    }

    /// Which upstream serves `uri`, listing the resources first if it is not known yet.
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
        self.list_resources(caller).await;
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
        let (slot, session) = link.session(caller).await?;
        let read = session.service.peer().read_resource_once(request);
        match tokio::time::timeout(link.upstream.call_timeout, read).await {
            Ok(Ok(response)) => Ok((response, routed)),
            Ok(Err(e)) => Err(link.failed_in(&slot, &session, e).await),
            Err(_) => Err(link.unavailable("no resource in time")),
        }
    }
}

impl Link {
    fn prompt_catalog(&self) -> Catalog {
        self.prompts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

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

    async fn list_prompts(&self, caller: &Caller) -> Result<Vec<Prompt>, ErrorData> {
        let (slot, session) = self.session(caller).await?;
        if !Self::offers(&session, |c| c.prompts.is_some()) {
            return Ok(Vec::new());
        }
        let listing = session.service.peer().list_all_prompts();
        let prompts = match tokio::time::timeout(self.upstream.call_timeout, listing).await {
            Ok(Ok(prompts)) => prompts,
            Ok(Err(e)) => return Err(self.failed_in(&slot, &session, e).await),
            Err(_) => return Err(self.unavailable("no list of prompts in time")),
        };
        let catalog = Catalog::new(
            &self.upstream.name,
            prompts.iter().map(|p| p.name.as_str()),
            self.max_name_len,
        );
        let by_original: HashMap<&str, &str> = catalog
            .tools
            .iter()
            .map(|(adv, orig)| (orig.as_str(), adv.as_str()))
            .collect();
        let advertised = prompts
            .iter()
            .filter_map(|p| {
                let name = by_original.get(p.name.as_str())?;
                let mut prompt = p.clone();
                prompt.name = (*name).to_owned();
                Some(prompt)
            })
            .collect();
        *self.prompts.write().unwrap_or_else(PoisonError::into_inner) = catalog;
        Ok(advertised)
    }

    async fn list_resources(&self, caller: &Caller) -> Result<Vec<Resource>, ErrorData> {
        let (slot, session) = self.session(caller).await?;
        if !Self::offers(&session, |c| c.resources.is_some()) {
            return Ok(Vec::new());
        }
        let listing = session.service.peer().list_all_resources();
        match tokio::time::timeout(self.upstream.call_timeout, listing).await {
            Ok(Ok(resources)) => Ok(resources),
            Ok(Err(e)) => Err(self.failed_in(&slot, &session, e).await),
            Err(_) => Err(self.unavailable("no list of resources in time")),
        }
    }
}

/// Keeps the type named where the gateway is built.
pub(super) type Owners = HashMap<String, ResourceRef>;
