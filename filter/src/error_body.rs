//! NGINX Plus API error bodies for the replies the filter makes itself, in the
//! shape the kv-backend uses, so clients see one error format.

use crate::proof::hex_lower;
use serde::Serialize;

/// The `href` every NGINX Plus API error carries.
pub(crate) const NGINX_API_HREF: &str = "https://nginx.org/en/docs/http/ngx_http_api_module.html";

/// The `code` of a refused replication request.
pub(crate) const REPLICATION_FORBIDDEN: &str = "ReplicationForbidden";

/// The `code` of a replayed replication request.
pub(crate) const REPLICATION_REPLAY: &str = "ReplicationReplay";

/// The `code` of a write applied on the primary but not acknowledged by enough
/// replicas in time.
pub(crate) const REPLICATION_TIMEOUT: &str = "ReplicationTimeout";

/// The `code` of an invalid `x-replikv-min-acks` / `x-replikv-ack-timeout-ms`.
pub(crate) const REPLICATION_ACK_INVALID: &str = "ReplicationAckInvalid";

#[derive(Serialize)]
struct Body<'a> {
    error: Error<'a>,
    request_id: &'a str,
    href: &'a str,
}

#[derive(Serialize)]
struct Error<'a> {
    status: u16,
    text: &'a str,
    code: &'a str,
}

/// The request id for an error body: Envoy's `x-request-id` (a UUID) without its
/// dashes when that leaves 32 hex digits, otherwise `random` in hex.
pub(crate) fn request_id(x_request_id: Option<&str>, random: [u8; 16]) -> String {
    if let Some(id) = x_request_id {
        let compact: String = id.chars().filter(|c| *c != '-').collect();
        if compact.len() == 32 && compact.bytes().all(|b| b.is_ascii_hexdigit()) {
            return compact.to_ascii_lowercase();
        }
    }
    hex_lower(&random)
}

/// `{"error":{"status":N,"text":"...","code":"..."},"request_id":"...","href":"..."}`.
pub(crate) fn render(status: u16, text: &str, code: &str, request_id: &str) -> String {
    let body = Body {
        error: Error { status, text, code },
        request_id,
        href: NGINX_API_HREF,
    };
    // Serializing plain strings and integers cannot fail; fall back to a fixed body anyway.
    serde_json::to_string(&body).unwrap_or_else(|_| {
        format!(
            r#"{{"error":{{"status":{status},"text":"error","code":"{code}"}},"request_id":"{request_id}","href":"{NGINX_API_HREF}"}}"#
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_nginx_shape() {
        let body = render(
            403,
            "replication signature is invalid",
            REPLICATION_FORBIDDEN,
            "ab".repeat(16).as_str(),
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["status"], 403);
        assert_eq!(v["error"]["text"], "replication signature is invalid");
        assert_eq!(v["error"]["code"], "ReplicationForbidden");
        assert_eq!(v["request_id"], "ab".repeat(16));
        assert_eq!(v["href"], NGINX_API_HREF);
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn text_with_quotes_is_escaped() {
        let body = render(403, r#"header "x" bad"#, "C", "0");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["text"], r#"header "x" bad"#);
    }

    #[test]
    fn request_id_is_envoys_uuid_without_dashes() {
        let id = request_id(Some("0F8FAD5B-D9CB-469F-A165-70867728950E"), [0; 16]);
        assert_eq!(id, "0f8fad5bd9cb469fa16570867728950e");
    }

    #[test]
    fn request_id_falls_back_to_random_hex() {
        for given in [
            None,
            Some("not-a-uuid"),
            Some("0f8fad5b-d9cb-469f-a165-70867728950"),
        ] {
            assert_eq!(request_id(given, [0xab; 16]), "ab".repeat(16));
        }
    }
}
