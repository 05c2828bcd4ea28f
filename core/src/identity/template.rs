//! Identity templating in ACL policy paths, as Vault's `identitytpl`
//! (`sdk/helper/identitytpl`, ACL mode).
//!
//! Policy text arrives through `sys/policies/acl` ([`crate::policy`]), which
//! calls [`check`] on every path when the policy is parsed: a path with
//! `{{...}}` is *templated* and is kept aside instead of entering the ACL
//! as written. When a token with an identity entity is checked, the policy
//! store fills the templates from that entity's [`TemplateInput`] (built by
//! [`crate::identity::IdentityStore`]) with [`populate`]; a path whose
//! template cannot be filled for this token is dropped from its ACL.
//!
//! Supported, as in Vault: `identity.entity.id`, `.name`,
//! `.metadata.<key>`, `.aliases.<mount accessor>.id|name|metadata.<key>|
//! custom_metadata.<key>`, `identity.groups.ids.<id>.id|name|metadata.<key>`
//! and `identity.groups.names.<name>.id|name|metadata.<key>`. Values that
//! would widen the path (`/`, `*`, `+`) are refused as OpenBao refuses them
//! by default ([`TemplateError::Forbidden`]). `time.*` directives are not
//! supported (they would defeat the per-entity ACL cache): such paths are
//! dropped.

use std::collections::BTreeMap;

/// Substrings a substituted value may not contain (OpenBao's default
/// `BlockedSubstitutions` without `allow_slashes_in_identity_templates` and
/// `allow_wildcards_in_identity_templates`).
const BLOCKED: &[&str] = &["/", "*", "+"];

/// Why a template could not be filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// `{{` and `}}` do not pair up (refused when the policy is written).
    Unbalanced,
    /// The directive names nothing this token has (no entity, no such
    /// alias, metadata key or group, an empty value): the path is dropped.
    NotFound(String),
    /// The value contains a character that would widen the path
    /// (`/`, `*`, `+`): OpenBao refuses the token's whole ACL then.
    Forbidden(&'static str),
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Unbalanced => f.write_str("unbalanced templating characters"),
            TemplateError::NotFound(why) => f.write_str(why),
            TemplateError::Forbidden(v) => {
                write!(f, "template substitution contains forbidden value: {v:?}")
            }
        }
    }
}

/// One alias of the entity, as templates see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateAlias {
    pub mount_accessor: String,
    pub id: String,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub custom_metadata: BTreeMap<String, String>,
}

/// One group the entity is in (directly or inherited).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateGroup {
    pub id: String,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
}

/// What a token's templates are filled from: its entity and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateInput {
    pub entity_id: String,
    pub entity_name: String,
    pub metadata: BTreeMap<String, String>,
    pub aliases: Vec<TemplateAlias>,
    pub groups: Vec<TemplateGroup>,
}

/// Whether `s` holds template directives; `Err` when the braces do not pair
/// (Vault's `PopulateString` with `ValidityCheckOnly`).
pub fn check(s: &str) -> Result<bool, TemplateError> {
    let mut pieces = s.split("{{");
    if pieces.next().is_some_and(|first| first.contains("}}")) {
        return Err(TemplateError::Unbalanced);
    }
    let mut templated = false;
    for piece in pieces {
        if piece.split("}}").count() != 2 {
            return Err(TemplateError::Unbalanced);
        }
        templated = true;
    }
    Ok(templated)
}

/// Fill every directive in `s` from `input` (`None`: the token has no
/// entity).
pub fn populate(s: &str, input: Option<&TemplateInput>) -> Result<String, TemplateError> {
    let mut pieces = s.split("{{");
    let first = pieces.next().unwrap_or_default();
    if first.contains("}}") {
        return Err(TemplateError::Unbalanced);
    }
    let mut out = String::with_capacity(s.len() * 2);
    out.push_str(first);
    for piece in pieces {
        let mut parts = piece.split("}}");
        let (Some(directive), Some(rest), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TemplateError::Unbalanced);
        };
        let value = directive_value(directive.trim(), input)?;
        if let Some(bad) = BLOCKED.iter().find(|b| value.contains(**b)) {
            return Err(TemplateError::Forbidden(bad));
        }
        out.push_str(value);
        out.push_str(rest);
    }
    Ok(out)
}

fn not_found() -> TemplateError {
    TemplateError::NotFound("no value could be found for one of the template directives".into())
}

/// ACL mode's handling of a plain value: an empty string is "not found".
fn non_empty(v: &str) -> Result<&str, TemplateError> {
    if v.is_empty() {
        Err(not_found())
    } else {
        Ok(v)
    }
}

/// A metadata lookup: `key` present (even with an empty value) or not found.
fn meta<'a>(m: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, TemplateError> {
    m.get(key).map(String::as_str).ok_or_else(not_found)
}

fn directive_value<'a>(
    directive: &str,
    input: Option<&'a TemplateInput>,
) -> Result<&'a str, TemplateError> {
    if let Some(rest) = directive.strip_prefix("identity.entity.") {
        let e = input.ok_or_else(|| {
            TemplateError::NotFound(
                "string contains entity template directives but no entity was provided".into(),
            )
        })?;
        return entity_value(rest, e);
    }
    if let Some(rest) = directive.strip_prefix("identity.groups.") {
        let groups = input.map(|i| i.groups.as_slice()).unwrap_or_default();
        if groups.is_empty() {
            return Err(TemplateError::NotFound(
                "string contains groups template directives but no groups were provided".into(),
            ));
        }
        return group_value(rest, groups);
    }
    Err(not_found())
}

fn entity_value<'a>(sel: &str, e: &'a TemplateInput) -> Result<&'a str, TemplateError> {
    match sel {
        "id" => non_empty(&e.entity_id),
        "name" => non_empty(&e.entity_name),
        _ => {
            if let Some(key) = sel.strip_prefix("metadata.") {
                return meta(&e.metadata, key);
            }
            if let Some(rest) = sel.strip_prefix("aliases.") {
                let Some((accessor, field)) = rest.split_once('.') else {
                    return Err(TemplateError::NotFound("invalid alias selector".into()));
                };
                let a = e
                    .aliases
                    .iter()
                    .find(|a| a.mount_accessor == accessor)
                    .ok_or_else(|| TemplateError::NotFound("alias not found".into()))?;
                return match field {
                    "id" => non_empty(&a.id),
                    "name" => non_empty(&a.name),
                    _ => {
                        if let Some(key) = field.strip_prefix("metadata.") {
                            meta(&a.metadata, key)
                        } else if let Some(key) = field.strip_prefix("custom_metadata.") {
                            meta(&a.custom_metadata, key)
                        } else {
                            Err(not_found())
                        }
                    }
                };
            }
            // `metadata`, `groups.names`, `groups.ids` without a key render
            // maps and lists, which ACL mode refuses.
            Err(not_found())
        }
    }
}

fn group_value<'a>(sel: &str, groups: &'a [TemplateGroup]) -> Result<&'a str, TemplateError> {
    let (by, rest) = sel
        .split_once('.')
        .ok_or_else(|| TemplateError::NotFound("invalid groups selector".into()))?;
    let by_id = match by {
        "ids" => true,
        "names" => false,
        _ => return Err(TemplateError::NotFound("invalid groups selector".into())),
    };
    let (key, field) = rest
        .split_once('.')
        .ok_or_else(|| TemplateError::NotFound("invalid groups accessor".into()))?;
    let g = groups
        .iter()
        .find(|g| if by_id { g.id == key } else { g.name == key })
        .ok_or_else(|| {
            TemplateError::NotFound(format!("entity is not a member of group {key:?}"))
        })?;
    match field {
        "id" => Ok(&g.id),
        "name" => non_empty(&g.name),
        _ => match field.strip_prefix("metadata.") {
            Some(k) => meta(&g.metadata, k),
            None => Err(not_found()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> TemplateInput {
        TemplateInput {
            entity_id: "e-1".into(),
            entity_name: "alice".into(),
            metadata: BTreeMap::from([
                ("team".into(), "red".into()),
                ("path".into(), "a/b".into()),
            ]),
            aliases: vec![TemplateAlias {
                mount_accessor: "auth_kubernetes_1".into(),
                id: "a-1".into(),
                name: "uid-1".into(),
                metadata: BTreeMap::from([("service_account_namespace".into(), "payments".into())]),
                custom_metadata: BTreeMap::from([("env".into(), "prod".into())]),
            }],
            groups: vec![TemplateGroup {
                id: "g-1".into(),
                name: "ops".into(),
                metadata: BTreeMap::from([("site".into(), "ams".into())]),
            }],
        }
    }

    #[test]
    fn validity_check_finds_templates_and_unbalanced_braces() {
        assert_eq!(check("secret/data/x"), Ok(false));
        assert_eq!(check("secret/{{identity.entity.id}}/*"), Ok(true));
        assert_eq!(check("secret/{{bogus}}"), Ok(true));
        assert_eq!(
            check("secret/{{identity.entity.id"),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(
            check("secret/identity.entity.id}}"),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(check("a/{{x}}}}"), Err(TemplateError::Unbalanced));
    }

    #[test]
    fn entity_alias_and_group_directives_fill_like_vault() {
        let i = input();
        let p = |s: &str| populate(s, Some(&i));
        assert_eq!(p("s/{{identity.entity.id}}/*").unwrap(), "s/e-1/*");
        assert_eq!(p("s/{{ identity.entity.name }}").unwrap(), "s/alice");
        assert_eq!(p("s/{{identity.entity.metadata.team}}").unwrap(), "s/red");
        assert_eq!(
            p("k8s/{{identity.entity.aliases.auth_kubernetes_1.metadata.service_account_namespace}}/x")
                .unwrap(),
            "k8s/payments/x"
        );
        assert_eq!(
            p("s/{{identity.entity.aliases.auth_kubernetes_1.name}}").unwrap(),
            "s/uid-1"
        );
        assert_eq!(
            p("s/{{identity.entity.aliases.auth_kubernetes_1.id}}").unwrap(),
            "s/a-1"
        );
        assert_eq!(
            p("s/{{identity.entity.aliases.auth_kubernetes_1.custom_metadata.env}}").unwrap(),
            "s/prod"
        );
        assert_eq!(p("s/{{identity.groups.names.ops.id}}").unwrap(), "s/g-1");
        assert_eq!(p("s/{{identity.groups.ids.g-1.name}}").unwrap(), "s/ops");
        assert_eq!(
            p("s/{{identity.groups.ids.g-1.metadata.site}}").unwrap(),
            "s/ams"
        );
        assert_eq!(
            p("{{identity.entity.id}}-{{identity.entity.name}}").unwrap(),
            "e-1-alice"
        );
    }

    #[test]
    fn unresolvable_directives_are_not_found() {
        let i = input();
        let missing = |s: &str| matches!(populate(s, Some(&i)), Err(TemplateError::NotFound(_)));
        assert!(missing("s/{{identity.entity.metadata.nope}}"));
        assert!(missing("s/{{identity.entity.metadata}}"));
        assert!(missing("s/{{identity.entity.aliases.auth_other.name}}"));
        assert!(missing(
            "s/{{identity.entity.aliases.auth_kubernetes_1.metadata.nope}}"
        ));
        assert!(missing("s/{{identity.entity.aliases.bad}}"));
        assert!(missing("s/{{identity.groups.names.other.id}}"));
        assert!(missing("s/{{identity.groups.bogus.ops.id}}"));
        assert!(missing("s/{{identity.entity.groups.names}}"));
        assert!(missing("s/{{time.now}}"));
        assert!(missing("s/{{bogus}}"));
        // No entity at all.
        assert!(matches!(
            populate("s/{{identity.entity.id}}", None),
            Err(TemplateError::NotFound(_))
        ));
        assert!(matches!(
            populate("s/{{identity.groups.names.ops.id}}", None),
            Err(TemplateError::NotFound(_))
        ));
        // Plain text passes through untouched.
        assert_eq!(populate("secret/x", None).unwrap(), "secret/x");
    }

    #[test]
    fn values_that_widen_the_path_are_forbidden() {
        let mut i = input();
        assert_eq!(
            populate("s/{{identity.entity.metadata.path}}", Some(&i)),
            Err(TemplateError::Forbidden("/"))
        );
        i.entity_name = "a*".into();
        assert_eq!(
            populate("s/{{identity.entity.name}}", Some(&i)),
            Err(TemplateError::Forbidden("*"))
        );
        i.entity_name = "a+b".into();
        assert_eq!(
            populate("s/{{identity.entity.name}}", Some(&i)),
            Err(TemplateError::Forbidden("+"))
        );
    }
}
