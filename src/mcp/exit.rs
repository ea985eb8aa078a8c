//! What a caller is told when a child's exit fails its request: a message naming the exit
//! and `error.data` with the exit status and the tail of the child's stderr.

use serde_json::json;

use crate::child::{ExitInfo, ExitReason};
use crate::clients::Limits;

/// Message and `error.data` for failures caused by a child's exit. When the child ran
/// under `rlimit_*` and died abnormally, both say so: the limit is the likely cause.
pub fn report(info: &ExitInfo, limits: &Limits) -> (String, serde_json::Value) {
    let mut message = exit_message(info);
    let mut data = exit_data(info);
    let abnormal = info.signal.is_some() || info.code.is_some_and(|c| c != 0);
    if abnormal && *limits != Limits::default() {
        let limits = limits_text(limits);
        message.push_str(&format!(
            "; it ran under {limits}, which it may have exceeded"
        ));
        if let Some(obj) = data.as_object_mut() {
            obj.insert("rlimits".into(), json!(limits));
        }
    }
    (message, data)
}

fn limits_text(limits: &Limits) -> String {
    let named = [
        ("rlimit_as", limits.address_space),
        ("rlimit_nofile", limits.open_files),
        ("rlimit_nproc", limits.processes),
    ];
    let set: Vec<String> = named
        .iter()
        .filter_map(|(n, v)| Some(format!("{n}={}", (*v)?)))
        .collect();
    set.join(", ")
}

/// The human message for a child that ended with requests in flight.
fn exit_message(info: &ExitInfo) -> String {
    match info.reason {
        ExitReason::LineTooLong => "child process wrote an over-long line and was restarted".into(),
        ExitReason::Stopped => format!("child process was stopped ({})", info.status),
        ExitReason::Exited => format!("child process exited ({})", info.status),
    }
}

/// `error.data` for failures caused by a child's exit: status and stderr tail.
fn exit_data(info: &ExitInfo) -> serde_json::Value {
    json!({
        "exit_status": info.status,
        "exit_code": info.code,
        "signal": info.signal,
        "stderr_tail": info.stderr_tail,
    })
}
