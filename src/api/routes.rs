//! The API's endpoints, one table ([`ROUTES`]) from which both dispatch and the 404 text come:
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
//! is 405 with `Allow`, anything else 404. The endpoints work on a [`Lifecycle`]: the running
//! [`crate::vmm::Vmm`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::http::{Request, Response};
use crate::exit_stats::{ExitSnapshot, ExitSummary};
use crate::snapshot::{SaveError, Saved};
use crate::vcpu::control::ControlError;

/// A device as `GET /vm` lists it: `{"kind": …, "name": …, …}`, the rest of its fields
/// saying what it is made of (a disk's path, a TAP's name, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// The kind of device: virtio-blk, virtio-net, virtio-rng, …
    pub kind: &'static str,
    /// What the guest calls it: vda, eth0, virtio_rng.0, …
    pub name: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl DeviceInfo {
    pub fn new(kind: &'static str, name: String) -> Self {
        DeviceInfo {
            kind,
            name,
            details: serde_json::Map::new(),
        }
    }

    /// Adds the field `key`.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// What `GET /vm` answers.
#[derive(Debug, Serialize)]
pub struct VmStatus {
    /// "running" or "paused".
    pub state: &'static str,
    pub uptime_ms: u64,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub devices: Vec<DeviceInfo>,
    pub exits: ExitSummary,
}

/// What the endpoints ask of the VM: its lifecycle. [`crate::vmm::Vmm`] implements it; the
/// tests use a stand-in without KVM.
pub trait Lifecycle: Send + Sync {
    fn status(&self) -> VmStatus;
    fn exits(&self) -> ExitSnapshot;
    fn pause(&self) -> Result<(), ControlError>;
    fn resume(&self) -> Result<(), ControlError>;
    /// Asks the VM to stop; the VMM then ends with exit code 0.
    fn stop(&self);
    fn snapshot(&self, dir: &Path) -> Result<Saved, SaveError>;
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

/// An endpoint: its path, the one method it takes, and its handler (given the VM and the
/// request's body).
pub struct Route {
    pub path: &'static str,
    pub method: &'static str,
    handler: fn(&dyn Lifecycle, &[u8]) -> Response,
}

/// Every endpoint.
pub const ROUTES: [Route; 6] = [
    Route {
        path: "/vm",
        method: "GET",
        handler: get_vm,
    },
    Route {
        path: "/vm/exits",
        method: "GET",
        handler: get_exits,
    },
    Route {
        path: "/vm/pause",
        method: "PUT",
        handler: put_pause,
    },
    Route {
        path: "/vm/resume",
        method: "PUT",
        handler: put_resume,
    },
    Route {
        path: "/vm/stop",
        method: "PUT",
        handler: put_stop,
    },
    Route {
        path: "/vm/snapshot",
        method: "PUT",
        handler: put_snapshot,
    },
];

/// Answers one request.
pub fn handle(vm: &dyn Lifecycle, req: &Request) -> Response {
    let Some(route) = ROUTES.iter().find(|route| route.path == req.path) else {
        let endpoints: Vec<String> = ROUTES
            .iter()
            .map(|route| format!("{} {}", route.method, route.path))
            .collect();
        return Response::error(
            404,
            format!(
                "no endpoint {}: the endpoints are {}",
                req.path,
                endpoints.join(", ")
            ),
        );
    };
    if req.method != route.method {
        let mut response = Response::error(
            405,
            format!("{} takes {}, not {}", route.path, route.method, req.method),
        );
        response.allow = Some(route.method);
        return response;
    }
    (route.handler)(vm, &req.body)
}

fn get_vm(vm: &dyn Lifecycle, _body: &[u8]) -> Response {
    json(&vm.status())
}

fn get_exits(vm: &dyn Lifecycle, _body: &[u8]) -> Response {
    json(&vm.exits())
}

fn put_pause(vm: &dyn Lifecycle, body: &[u8]) -> Response {
    no_arguments(body).map_or_else(|e| e, |()| control(vm.pause()))
}

fn put_resume(vm: &dyn Lifecycle, body: &[u8]) -> Response {
    no_arguments(body).map_or_else(|e| e, |()| control(vm.resume()))
}

fn put_stop(vm: &dyn Lifecycle, body: &[u8]) -> Response {
    if let Err(response) = no_arguments(body) {
        return response;
    }
    vm.stop();
    let mut response = Response::no_content();
    response.close = true;
    response
}

fn put_snapshot(vm: &dyn Lifecycle, body: &[u8]) -> Response {
    let args: SnapshotArguments = match serde_json::from_slice(body) {
        Ok(args) => args,
        Err(e) => {
            return Response::error(
                400,
                format!("PUT /vm/snapshot takes {{\"path\": \"DIR\"}} ({e})"),
            )
        }
    };
    match vm.snapshot(&args.path) {
        Ok(saved) => {
            log::info!(
                "snapshot written to {} in {:.1} ms",
                saved.path.display(),
                saved.took_ms
            );
            json(&saved)
        }
        Err(e) if e.is_user_error() => Response::error(400, e),
        Err(e) => Response::error(500, e),
    }
}

/// Accepts an empty body or `{}`; anything else is answered 400.
fn no_arguments(body: &[u8]) -> Result<(), Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    serde_json::from_slice::<NoArguments>(body)
        .map(|_| ())
        .map_err(|e| {
            Response::error(
                400,
                format!("this endpoint takes no arguments: send no body or {{}} ({e})"),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::stand_in::StandIn;
    use crate::stop::StopReason;

    fn context() -> StandIn {
        StandIn::new(vec![
            DeviceInfo::new("virtio-blk", "vda".into())
                .with("path", "/tmp/disk.img")
                .with("read_only", true),
            DeviceInfo::new("virtio-net", "eth0".into())
                .with("tap", "tap0")
                .with("mac", "52:54:00:12:34:56"),
        ])
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
        assert!(!ctx.stop.stopping(), "a wrong method does nothing");
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
        assert!(!ctx.stop.stopping(), "a bad body stops nothing");
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
        assert_eq!(ctx.stop.reason(), Some(StopReason::ApiStop));
    }
}
