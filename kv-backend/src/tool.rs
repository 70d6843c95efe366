//! `kv-backend export` and `kv-backend import`: move a zone between NGINX Plus
//! and replikv as an NGINX keyval `state=` file (format in `state.rs`).
//!
//! Both talk HTTP to a running node (its Envoy, the load balancer, or a
//! kv-backend directly), never to the data dir: the store is locked by the
//! server, and an import must go through the normal write path so that it
//! takes a seq, lands in the replication log and reaches every replica.
//!
//! - `export`: `GET /replikv/state/{http|stream}/{zone}`, printed as is.
//! - `import`: refuses a zone that is not empty unless `--replace` (which
//!   first DELETEs the zone: a separate write), then POSTs every entry in ONE
//!   request (all or nothing, one seq) when the body fits `--max-body`, else
//!   one POST per entry. Entries that expired are skipped; the others keep
//!   their instant, sent as `expire = instant - now`. A 307 (a replica) is
//!   followed once.
//!
//! The HTTP client is a few lines over `TcpStream` (http:// only, one request
//! per connection), so the binary needs no HTTP client crate.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use serde_json::Value;

use crate::config::parse_size;
use crate::state;
use crate::writer::now_ms;

/// The subcommands besides serving.
#[derive(Debug, Parser)]
#[command(name = "kv-backend", version)]
pub enum Tool {
    /// Print a zone of a running node as an NGINX keyval state file.
    Export(ExportArgs),
    /// Load an NGINX keyval state file into a zone of a running node, through the API.
    Import(ImportArgs),
}

/// Which node and zone.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// A node's Envoy, the load balancer, or a kv-backend: `http://HOST:PORT`.
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    pub url: String,
    /// The zone's name.
    #[arg(long)]
    pub zone: String,
    /// The zone is a stream zone (`/api/{v}/stream/keyvals/`).
    #[arg(long)]
    pub stream: bool,
}

/// `kv-backend export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: Target,
    /// Write here instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `kv-backend import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub target: Target,
    /// Empty the zone first (a DELETE, then the POST) instead of refusing a non-empty zone.
    #[arg(long)]
    pub replace: bool,
    /// Largest single POST; a larger import is sent one entry per POST.
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    pub max_body: u64,
    /// The state file; `-` reads stdin.
    pub file: PathBuf,
}

/// Runs a subcommand; the text to print on stderr when it succeeds.
pub fn run(tool: Tool) -> Result<String, String> {
    match tool {
        Tool::Export(args) => {
            let body = export(&args.target)?;
            match &args.output {
                Some(path) => std::fs::write(path, &body)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?,
                None => {
                    let mut stdout = std::io::stdout();
                    stdout
                        .write_all(&body)
                        .and_then(|()| stdout.write_all(b"\n"))
                        .and_then(|()| stdout.flush())
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(format!("exported zone {}", args.target.zone))
        }
        Tool::Import(args) => {
            let bytes = if args.file.as_os_str() == "-" {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                bytes
            } else {
                std::fs::read(&args.file)
                    .map_err(|e| format!("reading {}: {e}", args.file.display()))?
            };
            let summary = import(&args, &bytes)?;
            Ok(format!(
                "imported {} keys into zone {} ({} expired entries skipped, {} requests)",
                summary.imported, args.target.zone, summary.skipped, summary.posts
            ))
        }
    }
}

/// The zone's state file as the node serves it.
pub fn export(target: &Target) -> Result<Vec<u8>, String> {
    let kind = kind(target);
    let path = format!("/replikv/state/{kind}/{}", target.zone);
    let response = send(&target.url, "GET", &path, None)?;
    expect(&response, 200, "export")?;
    Ok(response.body)
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Keys stored.
    pub imported: usize,
    /// Entries left out because they had expired.
    pub skipped: usize,
    /// POST requests sent.
    pub posts: usize,
}

/// Loads the state file `bytes` into the target zone through the API.
pub fn import(args: &ImportArgs, bytes: &[u8]) -> Result<ImportSummary, String> {
    let target = &args.target;
    let entries = state::parse(bytes).map_err(|e| format!("invalid state file: {e}"))?;
    let display = if target.stream {
        format!("stream:{}", target.zone)
    } else {
        target.zone.clone()
    };
    let status = json(
        &send(&target.url, "GET", "/replikv/status", None)?,
        "status",
    )?;
    let zone = status["zones"]
        .get(&display)
        .ok_or_else(|| format!("zone {display} is not configured on {}", target.url))?;
    let timeout_ms = zone["timeout_ms"].as_u64();
    let zone_path = format!("/api/9/{}/keyvals/{}", kind(target), target.zone);
    let current = json(&send(&target.url, "GET", &zone_path, None)?, "zone")?;
    let present = current.as_object().map_or(0, serde_json::Map::len);
    if present > 0 {
        if !args.replace {
            return Err(format!(
                "zone {display} holds {present} keys; --replace empties it first"
            ));
        }
        let response = send(&target.url, "DELETE", &zone_path, None)?;
        expect(&response, 204, "emptying the zone")?;
    }
    let (pairs, skipped) = state::to_pairs(entries, now_ms(), timeout_ms);
    let mut posts = 0;
    if !pairs.is_empty() {
        let body = state::post_body(&pairs);
        if body.len() as u64 <= args.max_body {
            posts += 1;
            let response = send(&target.url, "POST", &zone_path, Some(body.as_bytes()))?;
            expect(&response, 201, "import")?;
        } else {
            for pair in &pairs {
                let body = state::post_body(std::slice::from_ref(pair));
                posts += 1;
                let response = send(&target.url, "POST", &zone_path, Some(body.as_bytes()))?;
                expect(&response, 201, &format!("importing key {:?}", pair.0))?;
            }
        }
    }
    Ok(ImportSummary {
        imported: pairs.len(),
        skipped,
        posts,
    })
}

fn kind(target: &Target) -> &'static str {
    if target.stream {
        "stream"
    } else {
        "http"
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

fn expect(response: &HttpResponse, status: u16, what: &str) -> Result<(), String> {
    if response.status == status {
        return Ok(());
    }
    let detail = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| {
            let e = &v["error"];
            Some(format!("{} {}", e["code"].as_str()?, e["text"].as_str()?))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned());
    Err(format!("{what}: HTTP {}: {detail}", response.status))
}

fn json(response: &HttpResponse, what: &str) -> Result<Value, String> {
    expect(response, 200, what)?;
    serde_json::from_slice(&response.body).map_err(|e| format!("{what}: not JSON: {e}"))
}

/// Sends one request to `base` (`http://HOST:PORT[/PREFIX]`) + `path`,
/// following one 307/308 redirect with the same method and body.
pub fn send(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse, String> {
    let (authority, prefix) = split_url(base)?;
    let response = exchange(authority, &format!("{prefix}{path}"), method, body)?;
    if matches!(response.status, 307 | 308) {
        if let Some(location) = &response.location {
            let (authority, path) = split_url(location)?;
            return exchange(
                authority,
                if path.is_empty() { "/" } else { path },
                method,
                body,
            );
        }
    }
    Ok(response)
}

/// `http://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH` without a trailing slash).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok((authority, path.trim_end_matches('/')))
}

fn exchange(
    authority: &str,
    path: &str,
    method: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse, String> {
    let timeout = Duration::from_secs(30);
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let fail = |e: std::io::Error| format!("{method} http://{authority}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.set_write_timeout(Some(timeout)).map_err(fail)?;
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: kv-backend-tool\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(fail)?;
    stream.write_all(body).map_err(fail)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(fail)?;
    parse_response(&raw)
        .ok_or_else(|| format!("{method} http://{authority}{path}: bad HTTP answer"))
}

fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut location = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(HttpResponse {
        status,
        location,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_prefix() {
        assert_eq!(
            split_url("http://127.0.0.1:10000"),
            Ok(("127.0.0.1:10000", ""))
        );
        assert_eq!(split_url("http://h:1/base/"), Ok(("h:1", "/base")));
        assert!(split_url("https://h:1").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://p:1/x\r\n\r\n";
        let response = parse_response(plain).unwrap();
        assert_eq!(response.status, 307);
        assert_eq!(response.location.as_deref(), Some("http://p:1/x"));
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().body, b"{\"a\":1}");
        assert!(parse_response(b"garbage").is_none());
    }
}
