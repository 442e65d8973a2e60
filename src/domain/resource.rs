//! RFC 8707 resource indicators: the MCP resource is one canonical string, and a client's
//! `resource` names it when it is the same URL up to the variants clients produce (MCP
//! authorization spec, canonical server URI): a trailing slash, and upper-case scheme or host.

use url::Url;

/// True when `requested` names the resource `canonical`.
pub fn same_resource(canonical: &str, requested: &str) -> bool {
    if requested == canonical {
        return true;
    }
    let (Ok(a), Ok(b)) = (Url::parse(canonical), Url::parse(requested)) else {
        return false;
    };
    let trim = |p: &str| p.trim_end_matches('/').to_owned();
    // `Url` lower-cases scheme and host and drops default ports.
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
        && trim(a.path()) == trim(b.path())
        && b.query().is_none()
        && b.fragment().is_none()
        && b.username().is_empty()
        && b.password().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_clients_send() {
        let r = "https://mcp.example.com/mcp";
        for ok in [
            r,
            "https://mcp.example.com/mcp/",
            "HTTPS://MCP.Example.com/mcp",
            "https://mcp.example.com:443/mcp",
        ] {
            assert!(same_resource(r, ok), "{ok}");
        }
        for bad in [
            "https://mcp.example.com",
            "https://mcp.example.com/",
            "https://mcp.example.com/MCP",
            "https://mcp.example.com/mcp?x=1",
            "https://mcp.example.com/mcp#x",
            "http://mcp.example.com/mcp",
            "https://evil.example/mcp",
            "https://mcp.example.com:8443/mcp",
            "mcp",
        ] {
            assert!(!same_resource(r, bad), "{bad}");
        }
    }
}
