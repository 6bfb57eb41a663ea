//! The `scale` subresource of deployments, replicasets and statefulsets (an `autoscaling/v1` Scale), which
//! `kubectl scale` reads and patches: only `spec.replicas` of the object changes (and with it the
//! generation).

use serde_json::{json, Value};

use super::{key_of, merge_patch, not_found, parse_body, status, with_rv, State, Target};
use crate::{http::Request, http::Response, objects};

/// Whether `plural` has a scale subresource.
pub(super) fn has_scale(plural: &str) -> bool {
    matches!(plural, "deployments" | "replicasets" | "statefulsets")
}

fn scale_of(obj: &Value, rv: i64) -> Value {
    let m = &obj["metadata"];
    let selector = objects::selector_string(&obj["spec"]["selector"]);
    with_rv(
        json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"], "creationTimestamp": m["creationTimestamp"]},
            "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
            "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
                "selector": if selector == "<none>" { String::new() } else { selector }}}),
        rv,
    )
}

/// GET, PUT or PATCH of `<resource>/<name>/scale`.
pub(super) async fn serve(st: &State, req: &Request, t: &Target, verb: &str) -> Result<Response, String> {
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t.res, t.ns.as_deref(), &name);
    let body = if verb == "get" {
        Value::Null
    } else {
        match parse_body(req) {
            Ok(b) => b,
            Err(resp) => return Ok(resp),
        }
    };
    for _ in 0..20 {
        let Some(existing) = st.etcd.get(&key).await? else { return Ok(not_found(t.res, &name)) };
        let current = scale_of(&existing.value, existing.mod_revision);
        let wanted = match verb {
            "get" => return Ok(Response::json(200, &current)),
            "update" => {
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
                    if rv != existing.mod_revision.to_string() {
                        return Ok(status(
                            409,
                            "Conflict",
                            &format!("Operation cannot be fulfilled on {}.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.res.plural),
                        ));
                    }
                }
                body.clone()
            }
            "patch" => {
                let mut s = current.clone();
                merge_patch(&mut s, &body);
                s
            }
            _ => return Ok(status(405, "MethodNotAllowed", &format!("{verb} is not supported on scale"))),
        };
        let Some(replicas) = wanted["spec"]["replicas"].as_i64().filter(|r| *r >= 0) else {
            return Ok(status(
                422,
                "Invalid",
                &format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {}: must be greater than or equal to 0", wanted["spec"]["replicas"]),
            ));
        };
        let mut obj = existing.value.clone();
        if obj["spec"]["replicas"].as_i64().unwrap_or(1) != replicas {
            obj["spec"]["replicas"] = json!(replicas);
            let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(generation + 1);
        }
        if let Some(rev) = st.etcd.put_if(&key, &obj, existing.mod_revision).await? {
            return Ok(Response::json(200, &scale_of(&obj, rev)));
        }
    }
    Ok(status(
        409,
        "Conflict",
        &format!("{} \"{name}\" kept changing while it was being scaled", t.res.plural),
    ))
}
