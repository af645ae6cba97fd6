//! The API's endpoints:
//!
//! | request | answer |
//! |---|---|
//! | `GET /vm` | 200, the VM: state, uptime, vCPUs, memory, devices, exit counts |
//! | `GET /vm/exits` | 200, the vCPU exit statistics ([`crate::exit_stats`]) |
//! | `PUT /vm/pause` | 204 once every vCPU is parked outside `KVM_RUN`; 400 if paused |
//! | `PUT /vm/resume` | 204; 400 if not paused |
//! | `PUT /vm/stop` | 204, then the VMM ends with exit code 0 |
//! | `PUT /vm/snapshot` `{"path": DIR}` | 200 once the paused VM is written to DIR ([`crate::snapshot`]); 400 if running |
//!
//! The other PUTs take no arguments: an empty body or `{}`. A known path with another method
//! is 405 with `Allow`, anything else 404.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::http::{Request, Response};
use crate::exit::{ExitReason, VmExit};
use crate::exit_stats::{ExitStats, ExitSummary};
use crate::vcpus::{self, ControlError, VcpuControl, PAUSE_TIMEOUT};

/// A device as `GET /vm` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub enum DeviceInfo {
    #[serde(rename = "virtio-blk")]
    Block {
        /// What the guest calls it: vda, vdb, …
        name: String,
        path: String,
        read_only: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    #[serde(rename = "virtio-net")]
    Net {
        /// What the guest calls it: eth0, eth1, …
        name: String,
        tap: String,
        mac: String,
    },
}

/// What the endpoints work on.
pub struct Context {
    pub exit: Arc<VmExit>,
    pub control: Arc<VcpuControl>,
    pub stats: Arc<ExitStats>,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub devices: Vec<DeviceInfo>,
    /// When the vCPUs started.
    pub started: Instant,
    /// What `PUT /vm/snapshot` saves (None: snapshots are not available, as in unit tests).
    pub snapshot: Option<crate::snapshot::Source>,
}

#[derive(Serialize)]
struct VmStatus<'a> {
    state: &'static str,
    uptime_ms: u64,
    vcpus: u8,
    memory_mib: u64,
    devices: &'a [DeviceInfo],
    exits: ExitSummary,
}

/// The body of the PUTs: nothing, or an empty object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

/// The body of `PUT /vm/snapshot`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotArguments {
    /// The directory to write: new, or empty.
    path: std::path::PathBuf,
}

/// Each path and the one method it takes.
const ENDPOINTS: [(&str, &str); 6] = [
    ("/vm", "GET"),
    ("/vm/exits", "GET"),
    ("/vm/pause", "PUT"),
    ("/vm/resume", "PUT"),
    ("/vm/stop", "PUT"),
    ("/vm/snapshot", "PUT"),
];

/// Answers one request.
pub fn handle(ctx: &Context, req: &Request) -> Response {
    let Some(&(path, method)) = ENDPOINTS.iter().find(|(path, _)| *path == req.path) else {
        return Response::error(
            404,
            format!(
                "no endpoint {}: the endpoints are GET /vm, GET /vm/exits, PUT /vm/pause, \
                 PUT /vm/resume, PUT /vm/stop and PUT /vm/snapshot",
                req.path
            ),
        );
    };
    if req.method != method {
        let mut response =
            Response::error(405, format!("{path} takes {method}, not {}", req.method));
        response.allow = Some(method);
        return response;
    }
    if path == "/vm/snapshot" {
        return snapshot(ctx, &req.body);
    }
    if method == "PUT" {
        if let Err(e) = no_arguments(&req.body) {
            return Response::error(400, e);
        }
    }
    match path {
        "/vm" => vm_status(ctx),
        "/vm/exits" => json(&ctx.stats.snapshot()),
        "/vm/pause" => control(ctx.control.pause(PAUSE_TIMEOUT, vcpus::kick)),
        "/vm/resume" => control(ctx.control.resume()),
        _ => {
            ctx.exit.request(ExitReason::ApiStop);
            let mut response = Response::no_content();
            response.close = true;
            response
        }
    }
}

fn no_arguments(body: &[u8]) -> Result<(), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<NoArguments>(body)
        .map(|_| ())
        .map_err(|e| format!("this endpoint takes no arguments: send no body or {{}} ({e})"))
}

fn snapshot(ctx: &Context, body: &[u8]) -> Response {
    let args: SnapshotArguments = match serde_json::from_slice(body) {
        Ok(args) => args,
        Err(e) => {
            return Response::error(
                400,
                format!("PUT /vm/snapshot takes {{\"path\": \"DIR\"}} ({e})"),
            )
        }
    };
    let Some(source) = &ctx.snapshot else {
        return Response::error(500, "this VM cannot be snapshotted");
    };
    match crate::snapshot::save(source, &args.path) {
        Ok(saved) => {
            log::info!(
                "snapshot written to {} in {:.1} ms",
                saved.path.display(),
                saved.took_ms
            );
            json(&saved)
        }
        Err(
            e @ (crate::snapshot::SaveError::Running
            | crate::snapshot::SaveError::NotEmpty(_)
            | crate::snapshot::SaveError::Io { .. }),
        ) => Response::error(400, e),
        Err(e) => Response::error(500, e),
    }
}

fn control(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => Response::no_content(),
        Err(e @ ControlError::Timeout { .. }) => Response::error(500, e),
        Err(e) => Response::error(400, e),
    }
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => Response::json(body),
        Err(e) => Response::error(500, format!("cannot encode the answer: {e}")),
    }
}

fn vm_status(ctx: &Context) -> Response {
    json(&VmStatus {
        state: if ctx.control.is_paused() {
            "paused"
        } else {
            "running"
        },
        uptime_ms: u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        vcpus: ctx.vcpus,
        memory_mib: ctx.memory_mib,
        devices: &ctx.devices,
        exits: ctx.stats.snapshot().summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            exit: Arc::new(VmExit::new().unwrap()),
            control: Arc::new(VcpuControl::default()),
            stats: Arc::new(ExitStats::new(2, &["serial".to_string()], &[])),
            vcpus: 2,
            memory_mib: 64,
            devices: vec![
                DeviceInfo::Block {
                    name: "vda".into(),
                    path: "/tmp/disk.img".into(),
                    read_only: true,
                    id: None,
                },
                DeviceInfo::Net {
                    name: "eth0".into(),
                    tap: "tap0".into(),
                    mac: "52:54:00:12:34:56".into(),
                },
            ],
            started: Instant::now(),
            snapshot: None,
        }
    }

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_str(r.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn get_vm() {
        let ctx = context();
        let r = handle(&ctx, &request("GET", "/vm", ""));
        assert_eq!(r.status, 200);
        let v = body(&r);
        assert_eq!(v["state"], "running");
        assert_eq!(v["vcpus"], 2);
        assert_eq!(v["memory_mib"], 64);
        assert!(v["uptime_ms"].is_u64());
        assert_eq!(
            v["devices"],
            serde_json::json!([
                {"kind": "virtio-blk", "name": "vda", "path": "/tmp/disk.img", "read_only": true},
                {"kind": "virtio-net", "name": "eth0", "tap": "tap0", "mac": "52:54:00:12:34:56"},
            ])
        );
        assert_eq!(v["exits"]["total"], 0);
        assert_eq!(v["exits"]["by_reason"]["io-out"], 0);
    }

    #[test]
    fn get_exits() {
        let ctx = context();
        let r = handle(&ctx, &request("GET", "/vm/exits", ""));
        assert_eq!(r.status, 200);
        let v = body(&r);
        assert_eq!(v["per_vcpu"], serde_json::json!([0, 0]));
        assert_eq!(v["by_device"][1]["device"], "no device");
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        let ctx = context();
        for path in ["/", "/vm/", "/vms", "/vm/pause/now", "/VM"] {
            let r = handle(&ctx, &request("GET", path, ""));
            assert_eq!(r.status, 404, "{path}");
            assert!(body(&r)["error"].as_str().unwrap().contains("GET /vm"));
        }
        for (method, path, allow) in [
            ("PUT", "/vm", "GET"),
            ("POST", "/vm/exits", "GET"),
            ("GET", "/vm/pause", "PUT"),
            ("get", "/vm/stop", "PUT"),
            ("DELETE", "/vm/resume", "PUT"),
        ] {
            let r = handle(&ctx, &request(method, path, ""));
            assert_eq!((r.status, r.allow), (405, Some(allow)), "{method} {path}");
        }
        assert!(!ctx.exit.stopping(), "a wrong method does nothing");
    }

    #[test]
    fn puts_take_nothing_or_an_empty_object() {
        let ctx = context();
        for ok in ["", "{}", " { } \n"] {
            // Resume on a running VM is refused, but only after the body was accepted.
            let r = handle(&ctx, &request("PUT", "/vm/resume", ok));
            assert_eq!(r.status, 400, "{ok:?}");
            assert!(
                body(&r)["error"].as_str().unwrap().contains("not paused"),
                "{ok:?}"
            );
        }
        for bad in ["{", "pause", r#"{"now": true}"#, "null", "\u{0}"] {
            let r = handle(&ctx, &request("PUT", "/vm/stop", bad));
            assert_eq!(r.status, 400, "{bad:?}");
            assert!(
                body(&r)["error"]
                    .as_str()
                    .unwrap()
                    .contains("takes no arguments"),
                "{bad:?}"
            );
        }
        assert!(!ctx.exit.stopping(), "a bad body stops nothing");
    }

    #[test]
    fn pause_resume_without_vcpus() {
        let ctx = context();
        assert_eq!(handle(&ctx, &request("PUT", "/vm/pause", "")).status, 204);
        assert_eq!(
            body(&handle(&ctx, &request("GET", "/vm", "")))["state"],
            "paused"
        );
        let again = handle(&ctx, &request("PUT", "/vm/pause", "{}"));
        assert_eq!(again.status, 400);
        assert!(body(&again)["error"]
            .as_str()
            .unwrap()
            .contains("already paused"));
        assert_eq!(handle(&ctx, &request("PUT", "/vm/resume", "")).status, 204);
        assert_eq!(
            body(&handle(&ctx, &request("GET", "/vm", "")))["state"],
            "running"
        );
    }

    #[test]
    fn stop_requests_the_exit_and_closes() {
        let ctx = context();
        let r = handle(&ctx, &request("PUT", "/vm/stop", ""));
        assert_eq!((r.status, r.close), (204, true));
        assert_eq!(ctx.exit.reason(), Some(ExitReason::ApiStop));
    }
}
