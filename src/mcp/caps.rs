//! Client capabilities on a shared child: what the child is told, and who may be asked.
//!
//! The child is initialized once, but sessions come and go, each declaring its own client
//! capabilities. So the child is told everything mcpmux can route to some session
//! ([`servable`]): a tool the child registers only for a sampling-capable client is then
//! there for every session, whoever came first. Each request the child sends goes only to
//! a session that declared that exact sub-capability (URL-mode elicitation, sampling with
//! tools, ...) in a revision that has it ([`ClientCaps::can_answer`]); when none can, the
//! child gets an error at once.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::version::Revision;

/// `sampling` sub-capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sampling {
    /// `includeContext` other than `none`.
    pub context: bool,
    /// `tools` / `toolChoice` in the request.
    pub tools: bool,
}

/// `elicitation` sub-capabilities (an empty object means form only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elicitation {
    /// `mode: "form"` or no mode.
    pub form: bool,
    /// `mode: "url"`.
    pub url: bool,
}

/// What a caller declared it can answer, from its `initialize` capabilities, limited to
/// what its revision has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCaps {
    /// `sampling/createMessage`.
    pub sampling: Option<Sampling>,
    /// `elicitation/create`.
    pub elicitation: Option<Elicitation>,
    /// `roots/list`.
    pub roots: bool,
}

#[derive(Deserialize, Default)]
struct Wire {
    sampling: Option<WireSampling>,
    elicitation: Option<WireElicitation>,
    roots: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct WireSampling {
    context: Option<IgnoredAny>,
    tools: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct WireElicitation {
    form: Option<IgnoredAny>,
    url: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct SamplingParams<'a> {
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(rename = "toolChoice", borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(rename = "includeContext", borrow)]
    include_context: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    task: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ElicitParams<'a> {
    #[serde(borrow)]
    mode: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    task: Option<&'a RawValue>,
}

impl ClientCaps {
    /// A caller's declared capabilities (raw `capabilities` of its `initialize`) as its
    /// `revision` has them. A malformed object declares nothing.
    pub fn parse(capabilities: Option<&RawValue>, revision: Revision) -> Self {
        let wire: Wire = capabilities
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default();
        let newest = revision.has_2025_11_25_features();
        let sampling = wire.sampling.map(|s| Sampling {
            context: s.context.is_some(),
            tools: newest && s.tools.is_some(),
        });
        let elicitation = wire.elicitation.filter(|_| revision.has_elicitation());
        let elicitation = elicitation.map(|e| Elicitation {
            // An empty object means form (compatibility), as does any object before
            // 2025-11-25, which had no modes.
            form: e.form.is_some() || e.url.is_none() || !newest,
            url: newest && e.url.is_some(),
        });
        Self {
            sampling,
            elicitation,
            roots: wire.roots.is_some(),
        }
    }

    /// Whether this caller may be sent the child's request `method` with `params`.
    /// Task-augmented requests are not routed (mcpmux does not declare client tasks).
    pub fn can_answer(&self, method: &str, params: Option<&RawValue>) -> bool {
        let raw = params.map_or("{}", |p| p.get());
        match method {
            "ping" => true,
            "roots/list" => self.roots,
            "sampling/createMessage" => {
                let Some(have) = self.sampling else {
                    return false;
                };
                let Ok(p) = serde_json::from_str::<SamplingParams<'_>>(raw) else {
                    return false;
                };
                let needs_tools = p.tools.is_some() || p.tool_choice.is_some();
                let needs_context = p.include_context.as_deref().is_some_and(|c| c != "none");
                p.task.is_none() && (!needs_tools || have.tools) && (!needs_context || have.context)
            }
            "elicitation/create" => {
                let Some(have) = self.elicitation else {
                    return false;
                };
                let Ok(p) = serde_json::from_str::<ElicitParams<'_>>(raw) else {
                    return false;
                };
                let mode_ok = match p.mode.as_deref() {
                    None | Some("form") => have.form,
                    Some("url") => have.url,
                    Some(_) => false,
                };
                p.task.is_none() && mode_ok
            }
            _ => false,
        }
    }
}

/// The client capabilities a caller must declare to be sent the child's request `method`
/// with `params`: the `requiredCapabilities` of a -32021 error. `None` when no declaration
/// would do: task-augmented requests (never routed) and methods no caller is asked.
pub fn required_for(method: &str, params: Option<&RawValue>) -> Option<serde_json::Value> {
    use serde_json::json;
    let raw = params.map_or("{}", |p| p.get());
    match method {
        "roots/list" => Some(json!({"roots": {}})),
        "sampling/createMessage" => {
            let p = serde_json::from_str::<SamplingParams<'_>>(raw).ok()?;
            if p.task.is_some() {
                return None;
            }
            let mut sampling = json!({});
            if p.tools.is_some() || p.tool_choice.is_some() {
                sampling["tools"] = json!({});
            }
            if p.include_context.as_deref().is_some_and(|c| c != "none") {
                sampling["context"] = json!({});
            }
            Some(json!({ "sampling": sampling }))
        }
        "elicitation/create" => {
            let p = serde_json::from_str::<ElicitParams<'_>>(raw).ok()?;
            match (p.task, p.mode.as_deref()) {
                (Some(_), _) => None,
                // An empty object declares form mode (the spec's own example).
                (None, None | Some("form")) => Some(json!({"elicitation": {}})),
                (None, Some("url")) => Some(json!({"elicitation": {"url": {}}})),
                (None, Some(_)) => None,
            }
        }
        _ => None,
    }
}

/// The client `capabilities` mcpmux declares to a child, as JSON: every request kind it can
/// route to a session that declared it, with `experimental` as the first caller gave it.
pub fn servable(experimental: Option<&RawValue>) -> String {
    let mut out = String::from(
        r#"{"sampling":{"context":{},"tools":{}},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}"#,
    );
    if let Some(experimental) = experimental.filter(|e| e.get().starts_with('{')) {
        out.push_str(r#","experimental":"#);
        out.push_str(experimental.get());
    }
    out.push('}');
    out
}

/// The `initialize` params mcpmux sends a child, from the first caller's: the newest
/// revision and [`servable`] capabilities (its `experimental` kept), everything else (its
/// `clientInfo`, vendor fields) as the caller wrote it. Params that are not an object are
/// replaced by a minimal one.
pub fn child_params(first: &str) -> String {
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(first).unwrap_or_default();
    let experimental = fields
        .get("capabilities")
        .and_then(|c| c.get("experimental"))
        .and_then(|e| serde_json::value::to_raw_value(e).ok());
    let capabilities = servable(experimental.as_deref());
    let capabilities = serde_json::from_str(&capabilities).unwrap_or_default();
    fields.insert("protocolVersion".into(), Revision::NEWEST.as_str().into());
    fields.insert("capabilities".into(), capabilities);
    fields.entry("clientInfo").or_insert_with(
        || serde_json::json!({"name": "mcpmux", "version": env!("CARGO_PKG_VERSION")}),
    );
    serde_json::Value::Object(fields).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_capabilities_name_the_exact_sub_capability() {
        let required = |method: &str, params: &str| required_for(method, Some(&raw(params)));
        let cases = [
            ("roots/list", "{}", Some(serde_json::json!({"roots": {}}))),
            (
                "sampling/createMessage",
                r#"{"messages":[]}"#,
                Some(serde_json::json!({"sampling": {}})),
            ),
            (
                "sampling/createMessage",
                r#"{"messages":[],"tools":[],"includeContext":"allServers"}"#,
                Some(serde_json::json!({"sampling": {"tools": {}, "context": {}}})),
            ),
            (
                "elicitation/create",
                r#"{"message":"m"}"#,
                Some(serde_json::json!({"elicitation": {}})),
            ),
            (
                "elicitation/create",
                r#"{"mode":"url"}"#,
                Some(serde_json::json!({"elicitation": {"url": {}}})),
            ),
            ("elicitation/create", r#"{"mode":"form","task":{}}"#, None),
            ("sampling/createMessage", r#"{"task":{}}"#, None),
            ("ping", "{}", None),
        ];
        for (method, params, want) in cases {
            assert_eq!(required(method, params), want, "{method} {params}");
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn caps(text: &str, revision: Revision) -> ClientCaps {
        ClientCaps::parse(Some(&raw(text)), revision)
    }

    fn asks(caps: &ClientCaps, method: &str, params: &str) -> bool {
        caps.can_answer(method, Some(&raw(params)))
    }

    #[test]
    fn sub_capabilities_are_read_per_revision() {
        let new = Revision::R2025_11_25;
        let all = caps(
            r#"{"sampling":{"tools":{},"context":{}},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}}"#,
            new,
        );
        let sampling = Sampling {
            context: true,
            tools: true,
        };
        let elicitation = Elicitation {
            form: true,
            url: true,
        };
        assert_eq!(
            all,
            ClientCaps {
                sampling: Some(sampling),
                elicitation: Some(elicitation),
                roots: true
            }
        );
        let empty = caps(r#"{"elicitation":{},"sampling":{}}"#, new);
        assert_eq!(
            empty.elicitation,
            Some(Elicitation {
                form: true,
                url: false
            })
        );
        assert_eq!(empty.sampling, Some(Sampling::default()));
        let url_only = caps(r#"{"elicitation":{"url":{}}}"#, new);
        assert_eq!(
            url_only.elicitation,
            Some(Elicitation {
                form: false,
                url: true
            })
        );
        // 2025-06-18 has form elicitation only and no sampling tools; 2025-03-26 no elicitation.
        let june = caps(
            r#"{"elicitation":{"url":{}},"sampling":{"tools":{}}}"#,
            Revision::R2025_06_18,
        );
        assert_eq!(
            june.elicitation,
            Some(Elicitation {
                form: true,
                url: false
            })
        );
        assert_eq!(june.sampling, Some(Sampling::default()));
        let march = caps(r#"{"elicitation":{},"sampling":{}}"#, Revision::R2025_03_26);
        assert_eq!(march.elicitation, None);
        assert_eq!(
            caps("[1]", new),
            ClientCaps::default(),
            "malformed declares nothing"
        );
        assert_eq!(ClientCaps::parse(None, new), ClientCaps::default());
    }

    #[test]
    fn child_requests_need_the_exact_sub_capability() {
        let new = Revision::R2025_11_25;
        let form = caps(r#"{"elicitation":{"form":{}},"sampling":{}}"#, new);
        let rich = caps(r#"{"elicitation":{"url":{}},"sampling":{"tools":{}}}"#, new);
        let url_elicit =
            r#"{"mode":"url","url":"https://x.example","elicitationId":"e","message":"m"}"#;
        let form_elicit = r#"{"message":"m","requestedSchema":{"type":"object"}}"#;
        let tool_sampling = r#"{"messages":[],"maxTokens":5,"tools":[{"name":"t"}]}"#;
        let plain_sampling = r#"{"messages":[],"maxTokens":5}"#;
        assert!(!asks(&form, "elicitation/create", url_elicit));
        assert!(asks(&form, "elicitation/create", form_elicit));
        assert!(asks(&rich, "elicitation/create", url_elicit));
        assert!(!asks(&rich, "elicitation/create", form_elicit), "url only");
        assert!(!asks(&form, "sampling/createMessage", tool_sampling));
        assert!(asks(&form, "sampling/createMessage", plain_sampling));
        assert!(asks(&rich, "sampling/createMessage", tool_sampling));
        let context = r#"{"messages":[],"maxTokens":5,"includeContext":"thisServer"}"#;
        assert!(!asks(&rich, "sampling/createMessage", context));
        let tasked = r#"{"messages":[],"maxTokens":5,"task":{"ttl":5}}"#;
        assert!(
            !asks(&rich, "sampling/createMessage", tasked),
            "client tasks are not declared"
        );
        assert!(!asks(&form, "roots/list", "{}") && asks(&form, "ping", "{}"));
        assert!(!asks(&rich, "unknown/method", "{}"));
        assert!(
            form.can_answer("elicitation/create", None),
            "no params: form mode"
        );
    }

    #[test]
    fn child_params_keep_the_callers_identity_and_experimental() {
        let first = r#"{"protocolVersion":"2025-03-26","capabilities":{"experimental":{"x":{}},"sampling":{}},"clientInfo":{"name":"probe","version":"1"},"x-vendor":1}"#;
        let got: serde_json::Value = serde_json::from_str(&child_params(first)).unwrap();
        assert_eq!(got["protocolVersion"], "2025-11-25");
        assert_eq!(
            got["capabilities"]["experimental"],
            serde_json::json!({"x": {}})
        );
        assert_eq!(
            got["capabilities"]["elicitation"]["url"],
            serde_json::json!({})
        );
        assert_eq!(
            (&got["clientInfo"]["name"], &got["x-vendor"]),
            (&serde_json::json!("probe"), &serde_json::json!(1))
        );
        let got: serde_json::Value = serde_json::from_str(&child_params("[]")).unwrap();
        assert_eq!(got["clientInfo"]["name"], "mcpmux");
    }

    #[test]
    fn the_child_is_told_everything_routable() {
        let told: serde_json::Value = serde_json::from_str(&servable(None)).unwrap();
        assert_eq!(
            told,
            serde_json::json!({"sampling":{"context":{},"tools":{}},"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true}})
        );
        let exp = raw(r#"{"x-vendor":{"a":1}}"#);
        let told: serde_json::Value = serde_json::from_str(&servable(Some(&exp))).unwrap();
        assert_eq!(
            told["experimental"],
            serde_json::json!({"x-vendor":{"a":1}})
        );
        let bad = raw("5");
        assert!(!servable(Some(&bad)).contains("experimental"));
    }
}
