//! Resuming a signed session this node has never seen (`--session-key-file`, DESIGN §6).
//!
//! A request whose `Mcp-Session-Id` is unknown here but verifies (right tenant, a key of the
//! ring, not expired, not ended by this node) re-creates the session from what the id
//! carries: its protocol revision and the caller's capabilities; when the tenant's child is
//! not running here, it is started and initialized with the `initialize` params the id
//! carries. The caller notices nothing. What did not move (subscriptions, log level, replay
//! buffers) is documented in deploy/README.md; the session is told `list_changed` for every
//! list the child can change, so a client that listens refetches.

use std::sync::Arc;

use http::Response;
use tracing::{debug, info};

use super::App;
use super::body::Body;
use super::exchange::{Ctx, start_failed};
use super::mcp::{not_inserted, session_not_found};
use crate::mcp::admission::InUse;
use crate::mcp::session::Session;

/// The session `id` names, re-created here; `Err` is the response (404 for every bad id).
pub(super) async fn resume(app: &Arc<App>, ctx: &Ctx, id: &str) -> Result<InUse, Response<Body>> {
    let Some(tokens) = &app.settings.session_tokens else {
        return Err(session_not_found());
    };
    let claims = match tokens.resumable(id, ctx.tenant.id.as_str()) {
        Ok(claims) => claims,
        Err(why) => {
            debug!(client_id = %ctx.tenant.id, reason = %why, "session id not resumed");
            return Err(session_not_found());
        }
    };
    let (_relay, cache) = app
        .pool
        .relay(&ctx.tenant, &ctx.spec, Some(&claims.params))
        .await
        .map_err(|e| start_failed("null", e))?;
    let caps = claims.caps();
    let inserted = (ctx.tenant.sessions).insert(id.into(), claims.version.clone(), caps);
    let in_use = inserted.map_err(not_inserted)?;
    let session = in_use.session();
    // A concurrent request may have resumed it first: only the first mark counts.
    if session.mark_signed(|| tokens.mark(&claims)) {
        announce_lists(session, &cache.result);
        crate::metrics::session_resumed(ctx.tenant.id.as_str());
        info!(client_id = %ctx.tenant.id, version = %claims.version, "session resumed from its signed id");
    }
    Ok(in_use)
}

/// DELETE of a signed id this node does not hold: nothing to end here but the id itself,
/// which this node then never resumes. True when `id` verified (204), false for 404.
pub(super) fn end_unknown(app: &App, ctx: &Ctx, id: &str) -> bool {
    let Some(tokens) = &app.settings.session_tokens else {
        return false;
    };
    match tokens.resumable(id, ctx.tenant.id.as_str()) {
        Ok(claims) => {
            drop(tokens.mark(&claims)); // dropping the mark records the end
            true
        }
        Err(_) => false,
    }
}

/// Queues `notifications/<list>/list_changed` on the session's GET stream for each list the
/// child declares it can change: the session's client never heard of this node's child.
fn announce_lists(session: &Session, init_result: &[u8]) {
    let Ok(result) = serde_json::from_slice::<serde_json::Value>(init_result) else {
        return;
    };
    for list in ["tools", "prompts", "resources"] {
        if result["capabilities"][list]["listChanged"] == true {
            let note =
                format!(r#"{{"jsonrpc":"2.0","method":"notifications/{list}/list_changed"}}"#);
            session.push(note.as_bytes());
        }
    }
}
