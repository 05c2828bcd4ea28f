//! The `identity/` mount: Vault's identity HTTP API over the
//! [`IdentityStore`](super::IdentityStore) of the unsealed core.
//!
//! Requests come from the router (under the ACL like any mount): entities
//! (`entity`, `entity/id/:id`, `entity/name/:name` and their lists),
//! entity aliases (`entity-alias`, `entity-alias/id/:id`), groups
//! (`group`, `group/id/:id`, `group/name/:name`), group aliases of
//! external groups (`group-alias`, `group-alias/id/:id`) and
//! `lookup/entity|group`. Writes go to the store (and so to storage under
//! `sys/identity/`); answers are shaped as OpenBao 2.7.2 shapes them
//! (`namespace_id` is always `root`, `local` always false, merges are not
//! served). Mount paths and types of aliases come from the live mount
//! table, looked up by accessor.

use std::collections::BTreeMap;
use std::sync::Weak;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Alias, Entity, EntityUpdate, Group, GroupUpdate, IdentityStore, Mirror};
use crate::core::Core;
use crate::error::{CoreError, Result};
use crate::logical::{
    Backend, Ctx, FieldKind as K, FieldSpec as F, Operation as Op, PathSpec, Response,
};
use crate::router::MountEntry;

const R_ENTITY: usize = 0;
const R_ENTITY_ID: usize = 1;
const R_ENTITY_ID_LIST: usize = 2;
const R_ENTITY_NAME: usize = 3;
const R_ENTITY_NAME_LIST: usize = 4;
const R_ALIAS: usize = 5;
const R_ALIAS_ID: usize = 6;
const R_ALIAS_LIST: usize = 7;
const R_GROUP: usize = 8;
const R_GROUP_ID: usize = 9;
const R_GROUP_ID_LIST: usize = 10;
const R_GROUP_NAME: usize = 11;
const R_GROUP_NAME_LIST: usize = 12;
const R_GALIAS: usize = 13;
const R_GALIAS_ID: usize = 14;
const R_GALIAS_LIST: usize = 15;
const R_LOOKUP_ENTITY: usize = 16;
const R_LOOKUP_GROUP: usize = 17;

const ENTITY_FIELDS: &[F] = &[
    F::new("id", K::String),
    F::new("name", K::String),
    F::new("metadata", K::Any),
    F::new("policies", K::CommaStringSlice),
    F::new("disabled", K::Bool),
];
const ALIAS_FIELDS: &[F] = &[
    F::new("id", K::String),
    F::new("entity_id", K::String),
    F::new("canonical_id", K::String),
    F::new("mount_accessor", K::String),
    F::new("name", K::String),
    F::new("custom_metadata", K::Any),
];
const GROUP_FIELDS: &[F] = &[
    F::new("id", K::String),
    F::new("type", K::String),
    F::new("name", K::String),
    F::new("metadata", K::Any),
    F::new("policies", K::CommaStringSlice),
    F::new("member_group_ids", K::CommaStringSlice),
    F::new("member_entity_ids", K::CommaStringSlice),
];
const GALIAS_FIELDS: &[F] = &[
    F::new("id", K::String),
    F::new("name", K::String),
    F::new("mount_accessor", K::String),
    F::new("canonical_id", K::String),
];
const LOOKUP_FIELDS: &[F] = &[
    F::new("name", K::String),
    F::new("id", K::String),
    F::new("alias_id", K::String),
    F::new("alias_name", K::String),
    F::new("alias_mount_accessor", K::String),
];
/// Vault's `framework.GenericNameRegex`.
macro_rules! generic_name {
    ($prefix:literal, $name:literal) => {
        concat!($prefix, "(?P<", $name, r">\w(?:[\w\-.@]*\w)?)")
    };
}

static PATHS: &[PathSpec] = &[
    PathSpec {
        pattern: "entity",
        operations: &[Op::Update],
        fields: ENTITY_FIELDS,
        existence_check: false,
        help: "Create a new entity",
    },
    PathSpec {
        pattern: generic_name!("entity/id/", "id"),
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: ENTITY_FIELDS,
        existence_check: false,
        help: "Update, read or delete an entity using entity ID",
    },
    PathSpec {
        pattern: "entity/id/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List all the entity IDs",
    },
    PathSpec {
        pattern: "entity/name/(?P<name>.+)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: ENTITY_FIELDS,
        existence_check: false,
        help: "Update, read or delete an entity using entity name",
    },
    PathSpec {
        pattern: "entity/name/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List all the entity names",
    },
    PathSpec {
        pattern: "entity-alias",
        operations: &[Op::Update],
        fields: ALIAS_FIELDS,
        existence_check: false,
        help: "Create a new alias.",
    },
    PathSpec {
        pattern: generic_name!("entity-alias/id/", "id"),
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: ALIAS_FIELDS,
        existence_check: false,
        help: "Update, read or delete an alias ID.",
    },
    PathSpec {
        pattern: "entity-alias/id/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List all the alias IDs.",
    },
    PathSpec {
        pattern: "group",
        operations: &[Op::Update],
        fields: GROUP_FIELDS,
        existence_check: false,
        help: "Create a new group.",
    },
    PathSpec {
        pattern: generic_name!("group/id/", "id"),
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: GROUP_FIELDS,
        existence_check: false,
        help: "Update or delete an existing group using its ID.",
    },
    PathSpec {
        pattern: "group/id/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List all the group IDs.",
    },
    PathSpec {
        pattern: "group/name/(?P<name>.+)",
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: GROUP_FIELDS,
        existence_check: false,
        help: "Update, read or delete a group using its name.",
    },
    PathSpec {
        pattern: "group/name/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List all the group names.",
    },
    PathSpec {
        pattern: "group-alias",
        operations: &[Op::Update],
        fields: GALIAS_FIELDS,
        existence_check: false,
        help: "Creates a new group alias, or updates an existing one.",
    },
    PathSpec {
        pattern: generic_name!("group-alias/id/", "id"),
        operations: &[Op::Read, Op::Update, Op::Delete],
        fields: GALIAS_FIELDS,
        existence_check: false,
        help: "Update, read or delete a group alias using ID.",
    },
    PathSpec {
        pattern: "group-alias/id/?",
        operations: &[Op::List],
        fields: &[],
        existence_check: false,
        help: "List all the group alias IDs.",
    },
    PathSpec {
        pattern: "lookup/entity",
        operations: &[Op::Update],
        fields: LOOKUP_FIELDS,
        existence_check: false,
        help: "Query entities based on various properties.",
    },
    PathSpec {
        pattern: "lookup/group",
        operations: &[Op::Update],
        fields: LOOKUP_FIELDS,
        existence_check: false,
        help: "Query groups based on various properties.",
    },
];

/// The backend behind the built-in `identity/` mount.
pub struct IdentityBackend {
    core: Weak<Core>,
}

impl IdentityBackend {
    pub fn new(core: Weak<Core>) -> Self {
        IdentityBackend { core }
    }
}

/// The mount table as alias lookups need it.
struct Mounts(Vec<MountEntry>);

impl Mounts {
    fn by_accessor(&self, accessor: &str) -> Option<MountEntry> {
        self.0.iter().find(|e| e.accessor == accessor).cloned()
    }

    /// `mount_path` and `mount_type` of an alias, when its mount still exists.
    fn annotate(&self, accessor: &str, into: &mut Map<String, Value>) {
        if let Some(e) = self.0.iter().find(|e| e.accessor == accessor) {
            into.insert("mount_path".into(), json!(e.path));
            into.insert("mount_type".into(), json!(e.mount_type));
        }
    }
}

/// RFC 3339 with nanoseconds, as Go's `time.RFC3339Nano`.
fn rfc3339_nano(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A map shown as Vault shows a Go map that may be nil: `null` when empty.
fn map_or_null(m: &BTreeMap<String, String>) -> Value {
    if m.is_empty() { Value::Null } else { json!(m) }
}

/// A list shown as Vault shows a Go slice that may be nil.
fn list_or_null(l: &[String]) -> Value {
    if l.is_empty() { Value::Null } else { json!(l) }
}

/// Vault's `TypeKVPairs`: an object of strings, or `key=value` strings (a
/// list, or one comma-separated string).
fn kv_pairs(field: &str, v: Option<&Value>) -> Result<Option<BTreeMap<String, String>>> {
    let pair_error = |i: usize| {
        CoreError::BadRequest(format!(
            "Field validation failed: error converting input for field {field:?}: invalid key pair at index {i} in field {field:?}"
        ))
    };
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let items: Vec<String> = match v {
        Value::Object(m) => {
            let mut out = BTreeMap::new();
            for (k, val) in m {
                let s = match val {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(CoreError::BadRequest(format!(
                            "Field validation failed: error converting input for field {field:?}: expected a map of strings"
                        )));
                    }
                };
                out.insert(k.clone(), s);
            }
            return Ok(Some(out));
        }
        Value::String(s) => s.split(',').map(str::to_string).collect(),
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, item) in a.iter().enumerate() {
                out.push(item.as_str().ok_or_else(|| pair_error(i))?.to_string());
            }
            out
        }
        _ => return Err(pair_error(0)),
    };
    let mut out = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let (k, v) = item.split_once('=').ok_or_else(|| pair_error(i))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(Some(out))
}

fn alias_json(a: &Alias, mounts: &Mounts, full: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(a.id));
    m.insert("canonical_id".into(), json!(a.canonical_id));
    m.insert("mount_accessor".into(), json!(a.mount_accessor));
    m.insert("metadata".into(), map_or_null(&a.metadata));
    m.insert("name".into(), json!(a.name));
    m.insert("merged_from_canonical_ids".into(), Value::Null);
    m.insert("creation_time".into(), json!(rfc3339_nano(a.creation_time)));
    m.insert(
        "last_update_time".into(),
        json!(rfc3339_nano(a.last_update_time)),
    );
    m.insert("local".into(), json!(false));
    m.insert("custom_metadata".into(), json!(a.custom_metadata));
    if full {
        m.insert("namespace_id".into(), json!("root"));
    }
    mounts.annotate(&a.mount_accessor, &mut m);
    m
}

fn entity_json(mirror: &Mirror, e: &Entity, mounts: &Mounts) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(e.id));
    m.insert("name".into(), json!(e.name));
    m.insert("metadata".into(), map_or_null(&e.metadata));
    m.insert("merged_entity_ids".into(), Value::Null);
    m.insert(
        "policies".into(),
        json!(super::sanitize_list(&e.policies, true)),
    );
    m.insert("disabled".into(), json!(e.disabled));
    m.insert("namespace_id".into(), json!("root"));
    m.insert("creation_time".into(), json!(rfc3339_nano(e.creation_time)));
    m.insert(
        "last_update_time".into(),
        json!(rfc3339_nano(e.last_update_time)),
    );
    let aliases: Vec<Value> = e
        .aliases
        .iter()
        .map(|a| {
            let mut j = alias_json(a, mounts, false);
            // An entity's aliases are its own: the canonical id is the entity.
            j.insert("canonical_id".into(), json!(e.id));
            Value::Object(j)
        })
        .collect();
    m.insert("aliases".into(), Value::Array(aliases));
    let (direct, inherited) = mirror.groups_of(e);
    let direct: Vec<&str> = direct.iter().map(|g| g.id.as_str()).collect();
    let inherited: Vec<&str> = inherited.iter().map(|g| g.id.as_str()).collect();
    let all: Vec<&str> = direct.iter().chain(inherited.iter()).copied().collect();
    m.insert("direct_group_ids".into(), json!(direct));
    m.insert("inherited_group_ids".into(), json!(inherited));
    m.insert("group_ids".into(), json!(all));
    m
}

fn group_json(mirror: &Mirror, g: &Group, mounts: &Mounts) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(g.id));
    m.insert("name".into(), json!(g.name));
    m.insert("policies".into(), list_or_null(&g.policies));
    m.insert(
        "member_entity_ids".into(),
        list_or_null(&mirror.members_of(g)),
    );
    let parents: Vec<String> = mirror
        .parents_of(&g.id)
        .iter()
        .map(|p| p.id.clone())
        .collect();
    m.insert("parent_group_ids".into(), list_or_null(&parents));
    m.insert("member_group_ids".into(), list_or_null(&g.member_group_ids));
    m.insert("metadata".into(), map_or_null(&g.metadata));
    m.insert("creation_time".into(), json!(rfc3339_nano(g.creation_time)));
    m.insert(
        "last_update_time".into(),
        json!(rfc3339_nano(g.last_update_time)),
    );
    m.insert("modify_index".into(), json!(g.modify_index));
    m.insert("type".into(), json!(g.group_type));
    m.insert("namespace_id".into(), json!("root"));
    let alias = match &g.alias {
        None => Map::new(),
        Some(a) => {
            let mut j = Map::new();
            j.insert("id".into(), json!(a.id));
            j.insert("canonical_id".into(), json!(g.id));
            j.insert("mount_accessor".into(), json!(a.mount_accessor));
            j.insert("metadata".into(), map_or_null(&a.metadata));
            j.insert("name".into(), json!(a.name));
            j.insert("merged_from_canonical_ids".into(), Value::Null);
            j.insert("creation_time".into(), json!(rfc3339_nano(a.creation_time)));
            j.insert(
                "last_update_time".into(),
                json!(rfc3339_nano(a.last_update_time)),
            );
            mounts.annotate(&a.mount_accessor, &mut j);
            j
        }
    };
    m.insert("alias".into(), Value::Object(alias));
    m
}

/// A LIST answer with `key_info` (Vault's `ListResponseWithInfo`): 404
/// when empty.
fn list_with_info(keys: Vec<String>, info: Map<String, Value>) -> Option<Response> {
    if keys.is_empty() {
        return None;
    }
    let mut d = Map::new();
    if !info.is_empty() {
        d.insert("key_info".into(), Value::Object(info));
    }
    d.insert("keys".into(), json!(keys));
    Some(Response::data(d))
}

fn short_alias(a: &Alias, mounts: &Mounts) -> Value {
    let mut j = Map::new();
    j.insert("id".into(), json!(a.id));
    j.insert("name".into(), json!(a.name));
    j.insert("mount_accessor".into(), json!(a.mount_accessor));
    mounts.annotate(&a.mount_accessor, &mut j);
    Value::Object(j)
}

/// The one-of-a-kind query of `lookup/entity|group` (Vault's rules):
/// `id`, `name`, `alias_id`, or `alias_name` with `alias_mount_accessor`.
enum Query {
    Id(String),
    Name(String),
    AliasId(String),
    Alias(String, String),
}

fn lookup_query(ctx: &Ctx<'_>) -> Result<Query> {
    let raw = ctx.fields.raw();
    let given = |k: &str| {
        raw.get(k)
            .map(|v| v.as_str().unwrap_or_default().to_string())
    };
    let (id, name, alias_id, alias_name, accessor) = (
        given("id"),
        given("name"),
        given("alias_id"),
        given("alias_name"),
        given("alias_mount_accessor"),
    );
    let count = [&id, &name, &alias_id, &alias_name, &accessor]
        .iter()
        .filter(|v| v.is_some())
        .count();
    let alias_pair = alias_name.as_deref().is_some_and(|s| !s.is_empty())
        && accessor.as_deref().is_some_and(|s| !s.is_empty());
    match count {
        0 => return Err(CoreError::bad_request("query parameter not supplied")),
        1 if alias_name.as_deref().is_some_and(|s| !s.is_empty())
            || accessor.as_deref().is_some_and(|s| !s.is_empty()) =>
        {
            return Err(CoreError::bad_request(
                "both 'alias_name' and 'alias_mount_accessor' needs to be set",
            ));
        }
        1 => {}
        2 if alias_pair => {}
        _ => {
            return Err(CoreError::bad_request(
                "query parameter conflict; please supply distinct set of query parameters",
            ));
        }
    }
    Ok(match (id, name, alias_id) {
        (Some(i), _, _) if !i.is_empty() => Query::Id(i),
        (_, Some(n), _) if !n.is_empty() => Query::Name(n),
        (_, _, Some(a)) if !a.is_empty() => Query::AliasId(a),
        _ => Query::Alias(alias_name.unwrap_or_default(), accessor.unwrap_or_default()),
    })
}

impl IdentityBackend {
    fn core(&self) -> Result<std::sync::Arc<Core>> {
        self.core
            .upgrade()
            .ok_or_else(|| CoreError::internal("core is gone"))
    }
}

#[async_trait]
impl Backend for IdentityBackend {
    fn paths(&self) -> &'static [PathSpec] {
        PATHS
    }

    fn is_pure(&self, route: usize, _req: &crate::logical::Request) -> bool {
        matches!(route, R_LOOKUP_ENTITY | R_LOOKUP_GROUP)
    }

    async fn handle(&self, ctx: Ctx<'_>) -> Result<Option<Response>> {
        let core = self.core()?;
        let u = core.unsealed()?;
        let store: &IdentityStore = &u.identity;
        let mounts = Mounts(u.router.entries());
        let f = ctx.fields;
        let op = ctx.req.operation;
        let s = |k: &str| f.str(k).map(str::to_string);
        match ctx.route {
            R_ENTITY | R_ENTITY_ID | R_ENTITY_NAME if matches!(op, Op::Update | Op::Create) => {
                let update = EntityUpdate {
                    id: f.capture("id").map(str::to_string).or_else(|| s("id")),
                    name: f.capture("name").map(str::to_string).or_else(|| s("name")),
                    metadata: kv_pairs("metadata", f.get("metadata"))?,
                    policies: f.strings("policies"),
                    disabled: f.bool("disabled"),
                };
                Ok(store.upsert_entity(update).await?.map(|e| {
                    let aliases: Vec<&str> = e.aliases.iter().map(|a| a.id.as_str()).collect();
                    Response::data(
                        json!({"id": e.id, "name": e.name, "aliases": if aliases.is_empty() { Value::Null } else { json!(aliases) }})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                }))
            }
            R_ENTITY_ID | R_ENTITY_NAME if op == Op::Read => {
                let m = store.mirror().await?;
                let e = match f.capture("id") {
                    Some(id) => m.entities.get(id),
                    None => m.entity_by_name(f.capture("name").unwrap_or_default()),
                };
                Ok(e.map(|e| Response::data(entity_json(&m, e, &mounts))))
            }
            R_ENTITY_ID | R_ENTITY_NAME => {
                store
                    .delete_entity(f.capture("id"), f.capture("name"))
                    .await?;
                Ok(None)
            }
            R_ENTITY_ID_LIST | R_ENTITY_NAME_LIST => {
                let m = store.mirror().await?;
                let mut entities: Vec<&Entity> = m.entities.values().collect();
                entities.sort_by(|a, b| a.id.cmp(&b.id));
                if ctx.route == R_ENTITY_NAME_LIST {
                    let keys = entities.iter().map(|e| e.name.clone()).collect();
                    return Ok(list_with_info(keys, Map::new()));
                }
                let mut info = Map::new();
                for e in &entities {
                    let mut j = Map::new();
                    j.insert("name".into(), json!(e.name));
                    if !e.aliases.is_empty() {
                        j.insert(
                            "aliases".into(),
                            Value::Array(
                                e.aliases.iter().map(|a| short_alias(a, &mounts)).collect(),
                            ),
                        );
                    }
                    info.insert(e.id.clone(), Value::Object(j));
                }
                let keys = entities.iter().map(|e| e.id.clone()).collect();
                Ok(list_with_info(keys, info))
            }
            R_ALIAS | R_ALIAS_ID if matches!(op, Op::Update | Op::Create) => {
                let canonical = s("canonical_id")
                    .filter(|c| !c.is_empty())
                    .or_else(|| s("entity_id"));
                let custom = kv_pairs("custom_metadata", f.get("custom_metadata"))?;
                let id = f.capture("id").map(str::to_string).or_else(|| s("id"));
                let lookup = |acc: &str| mounts.by_accessor(acc);
                let out = store
                    .upsert_alias(
                        &lookup,
                        id.as_deref(),
                        f.str("name"),
                        f.str("mount_accessor"),
                        canonical.as_deref(),
                        custom,
                    )
                    .await?;
                Ok(out.map(|(id, canonical_id)| {
                    Response::data(
                        json!({"id": id, "canonical_id": canonical_id})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                }))
            }
            R_ALIAS_ID | R_GALIAS_ID if op == Op::Read => {
                let id = f.capture("id").unwrap_or_default();
                let m = store.mirror().await?;
                let alias = if ctx.route == R_ALIAS_ID {
                    m.entity_by_alias_id(id).and_then(|e| {
                        e.aliases.iter().find(|a| a.id == id).map(|a| {
                            let mut a = a.clone();
                            a.canonical_id = e.id.clone();
                            a
                        })
                    })
                } else {
                    m.group_by_alias_id(id).and_then(|g| {
                        g.alias.clone().map(|mut a| {
                            a.canonical_id = g.id.clone();
                            a
                        })
                    })
                };
                Ok(alias.map(|a| Response::data(alias_json(&a, &mounts, true))))
            }
            R_ALIAS_ID => {
                store
                    .delete_alias(f.capture("id").unwrap_or_default())
                    .await?;
                Ok(None)
            }
            R_ALIAS_LIST | R_GALIAS_LIST => {
                let m = store.mirror().await?;
                let mut aliases: Vec<Alias> = if ctx.route == R_ALIAS_LIST {
                    m.entities
                        .values()
                        .flat_map(|e| {
                            e.aliases.iter().map(|a| {
                                let mut a = a.clone();
                                a.canonical_id = e.id.clone();
                                a
                            })
                        })
                        .collect()
                } else {
                    m.groups
                        .values()
                        .filter_map(|g| {
                            g.alias.clone().map(|mut a| {
                                a.canonical_id = g.id.clone();
                                a
                            })
                        })
                        .collect()
                };
                aliases.sort_by(|a, b| a.id.cmp(&b.id));
                let mut info = Map::new();
                for a in &aliases {
                    let mut j = Map::new();
                    j.insert("name".into(), json!(a.name));
                    j.insert("canonical_id".into(), json!(a.canonical_id));
                    j.insert("mount_accessor".into(), json!(a.mount_accessor));
                    j.insert("custom_metadata".into(), json!(a.custom_metadata));
                    j.insert("metadata".into(), map_or_null(&a.metadata));
                    j.insert("local".into(), json!(false));
                    mounts.annotate(&a.mount_accessor, &mut j);
                    info.insert(a.id.clone(), Value::Object(j));
                }
                Ok(list_with_info(
                    aliases.into_iter().map(|a| a.id).collect(),
                    info,
                ))
            }
            R_GROUP | R_GROUP_ID | R_GROUP_NAME if matches!(op, Op::Update | Op::Create) => {
                let id = match ctx.route {
                    R_GROUP_ID => f.capture("id").map(str::to_string),
                    R_GROUP => s("id").filter(|_| f.raw().contains_key("id")),
                    _ => None,
                };
                let name = match ctx.route {
                    R_GROUP_NAME => {
                        let n = f.capture("name").unwrap_or_default();
                        if n.is_empty() {
                            return Err(CoreError::bad_request("empty group name"));
                        }
                        Some(n.to_string())
                    }
                    _ => s("name"),
                };
                let update = GroupUpdate {
                    name,
                    group_type: s("type"),
                    metadata: kv_pairs("metadata", f.get("metadata"))?,
                    policies: f.strings("policies"),
                    member_entity_ids: f.strings("member_entity_ids"),
                    member_group_ids: f.strings("member_group_ids"),
                };
                Ok(store.upsert_group(id.as_deref(), update).await?.map(|g| {
                    Response::data(
                        json!({"id": g.id, "name": g.name})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                }))
            }
            R_GROUP_ID | R_GROUP_NAME if op == Op::Read => {
                let m = store.mirror().await?;
                let g = match f.capture("id") {
                    Some(id) => m.groups.get(id),
                    None => m.group_by_name(f.capture("name").unwrap_or_default()),
                };
                Ok(g.map(|g| Response::data(group_json(&m, g, &mounts))))
            }
            R_GROUP_ID | R_GROUP_NAME => {
                store
                    .delete_group(f.capture("id"), f.capture("name"))
                    .await?;
                Ok(None)
            }
            R_GROUP_ID_LIST | R_GROUP_NAME_LIST => {
                let m = store.mirror().await?;
                let mut groups: Vec<&Group> = m.groups.values().collect();
                groups.sort_by(|a, b| a.id.cmp(&b.id));
                if ctx.route == R_GROUP_NAME_LIST {
                    let keys = groups.iter().map(|g| g.name.clone()).collect();
                    return Ok(list_with_info(keys, Map::new()));
                }
                let mut info = Map::new();
                for g in &groups {
                    let mut j = Map::new();
                    j.insert("name".into(), json!(g.name));
                    j.insert("num_member_entities".into(), json!(m.members_of(g).len()));
                    j.insert("num_parent_groups".into(), json!(m.parents_of(&g.id).len()));
                    if let Some(a) = &g.alias {
                        j.insert("alias".into(), short_alias(a, &mounts));
                    }
                    info.insert(g.id.clone(), Value::Object(j));
                }
                let keys = groups.iter().map(|g| g.id.clone()).collect();
                Ok(list_with_info(keys, info))
            }
            R_GALIAS | R_GALIAS_ID if matches!(op, Op::Update | Op::Create) => {
                let id = match ctx.route {
                    R_GALIAS_ID => f.capture("id").map(str::to_string),
                    _ => s("id").filter(|_| f.raw().contains_key("id")),
                };
                let lookup = |acc: &str| mounts.by_accessor(acc);
                let out = store
                    .upsert_group_alias(
                        &lookup,
                        id.as_deref(),
                        f.str("name").unwrap_or_default(),
                        f.str("mount_accessor").unwrap_or_default(),
                        f.str("canonical_id").unwrap_or_default(),
                    )
                    .await?;
                Ok(out.map(|(id, canonical_id)| {
                    Response::data(
                        json!({"id": id, "canonical_id": canonical_id})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    )
                }))
            }
            R_GALIAS_ID => {
                store
                    .delete_group_alias(f.capture("id").unwrap_or_default())
                    .await?;
                Ok(None)
            }
            R_LOOKUP_ENTITY => {
                let q = lookup_query(&ctx)?;
                let m = store.mirror().await?;
                let e = match &q {
                    Query::Id(id) => m.entities.get(id),
                    Query::Name(n) => m.entity_by_name(n),
                    Query::AliasId(a) => m.entity_by_alias_id(a),
                    Query::Alias(name, acc) => m
                        .by_alias
                        .get(&(acc.clone(), name.clone()))
                        .and_then(|id| m.entities.get(id)),
                };
                Ok(e.map(|e| Response::data(entity_json(&m, e, &mounts))))
            }
            R_LOOKUP_GROUP => {
                let q = lookup_query(&ctx)?;
                let m = store.mirror().await?;
                let g = match &q {
                    Query::Id(id) => m.groups.get(id),
                    Query::Name(n) => m.group_by_name(n),
                    Query::AliasId(a) => m.group_by_alias_id(a),
                    Query::Alias(name, acc) => m.group_by_alias(acc, name),
                };
                Ok(g.map(|g| Response::data(group_json(&m, g, &mounts))))
            }
            _ => Err(CoreError::UnsupportedOperation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_pairs_take_objects_lists_and_strings_like_vault() {
        let v = json!({"a": "1", "n": 2, "b": true});
        let m = kv_pairs("metadata", Some(&v)).unwrap().unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["n"], "2");
        assert_eq!(m["b"], "true");
        let v = json!(["a=1", "b=x=y"]);
        let m = kv_pairs("metadata", Some(&v)).unwrap().unwrap();
        assert_eq!((m["a"].as_str(), m["b"].as_str()), ("1", "x=y"));
        let err = kv_pairs("metadata", Some(&json!(["a=b", "c"]))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Field validation failed: error converting input for field \"metadata\": invalid key pair at index 1 in field \"metadata\""
        );
        assert!(kv_pairs("metadata", Some(&json!("foo"))).is_err());
        assert!(kv_pairs("metadata", Some(&json!({"a": {"b": 1}}))).is_err());
        assert!(kv_pairs("metadata", None).unwrap().is_none());
    }

    #[test]
    fn times_render_as_rfc3339_nano() {
        assert_eq!(
            rfc3339_nano(1_796_574_990_364_924_553),
            "2026-12-06T16:36:30.364924553Z"
        );
        assert_eq!(
            rfc3339_nano(1_796_574_990_000_000_000),
            "2026-12-06T16:36:30Z"
        );
    }
}
