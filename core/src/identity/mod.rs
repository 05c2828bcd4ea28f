//! The identity store: who is behind a token, across auth methods.
//!
//! Every login names an alias (a username on one userpass mount, a role id
//! on one AppRole mount, a service account on one Kubernetes mount). The
//! store maps each alias — keyed by its mount's accessor and its name — to
//! an [`Entity`], creating both on the first login (Vault's
//! `CreateOrFetchEntity`); the entity's id goes on the token
//! (`entity_id`). Entities carry policies and metadata of their own, and
//! groups (internal by membership, external by a method's group aliases)
//! add policies to every token of their members: the token's
//! `identity_policies`, resolved when a request is checked
//! ([`token_acl`]), together with the identity templates of its policies
//! ([`template`]).
//!
//! Data lives under the barrier at `sys/identity/` (`entity/<id>`,
//! `group/<id>`, JSON) and is mirrored in memory with the indexes logins
//! and the API need; a write elsewhere in the cluster marks the mirror
//! stale ([`IdentityStore::invalidate`]) and the next use reloads it.
//! Every change moves [`IdentityStore::generation`] on, which is how the
//! per-entity views ([`IdentityView`]) and the policy store's per-entity
//! ACLs know they are out of date. The `identity/` mount serves the HTTP
//! API over this store ([`api`]).

pub mod api;
pub mod template;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, RwLockWriteGuard};

use crate::error::{CoreError, Result};
use crate::logical::LoginAlias;
use crate::metrics as m;
use crate::router::MountEntry;
use crate::storage::StorageView;

const ENTITY_PREFIX: &str = "entity/";
const GROUP_PREFIX: &str = "group/";

pub const GROUP_INTERNAL: &str = "internal";
pub const GROUP_EXTERNAL: &str = "external";

/// An alias: one identity at one auth mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Alias {
    pub id: String,
    pub canonical_id: String,
    pub mount_accessor: String,
    pub mount_type: String,
    pub mount_path: String,
    pub name: String,
    /// Set by the auth method at each login (e.g. a service account's
    /// namespace); usable in policy templates.
    pub metadata: BTreeMap<String, String>,
    /// Set through the API; `None` for aliases created by a login (Vault
    /// shows `null` then, `{}` for one created through the API).
    pub custom_metadata: Option<BTreeMap<String, String>>,
    /// Unix nanoseconds.
    pub creation_time: i64,
    pub last_update_time: i64,
}

/// An entity: a person or a service, with its aliases.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Entity {
    pub id: String,
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    pub policies: Vec<String>,
    pub disabled: bool,
    pub aliases: Vec<Alias>,
    /// External groups this entity is in, as its logins' group aliases (a
    /// JWT's groups claim) said, per mount: refreshed at every login on
    /// that mount.
    pub external_group_ids: Vec<String>,
    /// Unix nanoseconds.
    pub creation_time: i64,
    pub last_update_time: i64,
}

/// A group: `internal` (members listed) or `external` (members are the
/// entities whose logins name its alias).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Group {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub group_type: String,
    pub metadata: BTreeMap<String, String>,
    pub policies: Vec<String>,
    pub member_entity_ids: Vec<String>,
    pub member_group_ids: Vec<String>,
    /// External groups only: the alias a method's group claim must name.
    pub alias: Option<Alias>,
    pub modify_index: u64,
    /// Unix nanoseconds.
    pub creation_time: i64,
    pub last_update_time: i64,
}

/// Everything request checking needs to know about one entity, built once
/// per identity [`IdentityStore::generation`] and shared.
#[derive(Debug, Clone, Default)]
pub struct IdentityView {
    pub entity_id: String,
    /// The store generation this view was built at.
    pub generation: u64,
    pub disabled: bool,
    /// Vault's `identity_policies`: the entity's own, then its groups'
    /// (direct and inherited), each part sorted and deduplicated.
    pub policies: Vec<String>,
    /// What the token's policy templates are filled from.
    pub template: template::TemplateInput,
}

#[derive(Default)]
struct Mirror {
    loaded: bool,
    entities: HashMap<String, Entity>,
    /// (mount accessor, alias name) → entity id.
    by_alias: HashMap<(String, String), String>,
    /// Lower-cased entity name → entity id.
    entity_names: HashMap<String, String>,
    groups: HashMap<String, Group>,
    /// Lower-cased group name → group id.
    group_names: HashMap<String, String>,
}

impl Mirror {
    fn index_entity(&mut self, e: Entity) {
        for a in &e.aliases {
            self.by_alias
                .insert((a.mount_accessor.clone(), a.name.clone()), e.id.clone());
        }
        self.entity_names
            .insert(e.name.to_lowercase(), e.id.clone());
        self.entities.insert(e.id.clone(), e);
    }

    fn unindex_entity(&mut self, id: &str) -> Option<Entity> {
        let old = self.entities.remove(id)?;
        for a in &old.aliases {
            self.by_alias
                .remove(&(a.mount_accessor.clone(), a.name.clone()));
        }
        if self
            .entity_names
            .get(&old.name.to_lowercase())
            .map(String::as_str)
            == Some(id)
        {
            self.entity_names.remove(&old.name.to_lowercase());
        }
        Some(old)
    }

    fn index_group(&mut self, g: Group) {
        self.group_names.insert(g.name.to_lowercase(), g.id.clone());
        self.groups.insert(g.id.clone(), g);
    }

    fn unindex_group(&mut self, id: &str) -> Option<Group> {
        let old = self.groups.remove(id)?;
        if self
            .group_names
            .get(&old.name.to_lowercase())
            .map(String::as_str)
            == Some(id)
        {
            self.group_names.remove(&old.name.to_lowercase());
        }
        Some(old)
    }

    pub(crate) fn entity_by_name(&self, name: &str) -> Option<&Entity> {
        self.entity_names
            .get(&name.to_lowercase())
            .and_then(|id| self.entities.get(id))
    }

    pub(crate) fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.group_names
            .get(&name.to_lowercase())
            .and_then(|id| self.groups.get(id))
    }

    /// The entity holding the alias `id`.
    fn entity_by_alias_id(&self, id: &str) -> Option<&Entity> {
        self.entities
            .values()
            .find(|e| e.aliases.iter().any(|a| a.id == id))
    }

    /// The group whose alias is `id`.
    fn group_by_alias_id(&self, id: &str) -> Option<&Group> {
        self.groups
            .values()
            .find(|g| g.alias.as_ref().is_some_and(|a| a.id == id))
    }

    /// The group whose alias is (accessor, name).
    fn group_by_alias(&self, accessor: &str, name: &str) -> Option<&Group> {
        self.groups.values().find(|g| {
            g.alias
                .as_ref()
                .is_some_and(|a| a.mount_accessor == accessor && a.name == name)
        })
    }

    /// The groups `e` is a member of directly (internal by listing,
    /// external by login), sorted by id.
    fn direct_groups(&self, e: &Entity) -> Vec<&Group> {
        let mut out: Vec<&Group> = self
            .groups
            .values()
            .filter(|g| {
                if g.group_type == GROUP_EXTERNAL {
                    e.external_group_ids.contains(&g.id)
                } else {
                    g.member_entity_ids.contains(&e.id)
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The groups listing `child` in `member_group_ids` (its parents),
    /// sorted by id.
    fn parents_of(&self, child: &str) -> Vec<&Group> {
        let mut out: Vec<&Group> = self
            .groups
            .values()
            .filter(|g| g.member_group_ids.iter().any(|c| c == child))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Vault's `GroupsByEntityID`: the direct groups, and those inherited
    /// through parents (breadth first, each once; cycles cut).
    fn groups_of(&self, e: &Entity) -> (Vec<&Group>, Vec<&Group>) {
        let direct = self.direct_groups(e);
        let mut seen: HashSet<&str> = direct.iter().map(|g| g.id.as_str()).collect();
        let mut inherited = Vec::new();
        let mut queue: Vec<&Group> = direct.clone();
        let mut i = 0;
        while i < queue.len() {
            let child = queue[i].id.clone();
            for p in self.parents_of(&child) {
                if seen.insert(p.id.as_str()) {
                    inherited.push(p);
                    queue.push(p);
                }
            }
            i += 1;
        }
        (direct, inherited)
    }

    /// Entities whose tokens are in `group` (for external groups, those
    /// whose logins named its alias), sorted.
    fn members_of(&self, g: &Group) -> Vec<String> {
        if g.group_type != GROUP_EXTERNAL {
            return g.member_entity_ids.clone();
        }
        let mut ids: Vec<String> = self
            .entities
            .values()
            .filter(|e| e.external_group_ids.contains(&g.id))
            .map(|e| e.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Would making `member` a member group of `group` close a cycle?
    /// (`member` reaches `group` through its own member groups.)
    fn reaches(&self, from: &str, target: &str) -> bool {
        let mut stack = vec![from.to_string()];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if id == target {
                return true;
            }
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(g) = self.groups.get(&id) {
                stack.extend(g.member_group_ids.iter().cloned());
            }
        }
        false
    }

    fn view(&self, e: &Entity, generation: u64) -> IdentityView {
        let (direct, inherited) = self.groups_of(e);
        let mut group_policies: Vec<String> = direct
            .iter()
            .chain(inherited.iter())
            .flat_map(|g| g.policies.iter().cloned())
            .collect();
        group_policies.sort();
        group_policies.dedup();
        let mut policies = e.policies.clone();
        policies.extend(group_policies);
        IdentityView {
            entity_id: e.id.clone(),
            generation,
            disabled: e.disabled,
            policies,
            template: template::TemplateInput {
                entity_id: e.id.clone(),
                entity_name: e.name.clone(),
                metadata: e.metadata.clone(),
                aliases: e
                    .aliases
                    .iter()
                    .map(|a| template::TemplateAlias {
                        mount_accessor: a.mount_accessor.clone(),
                        id: a.id.clone(),
                        name: a.name.clone(),
                        metadata: a.metadata.clone(),
                        custom_metadata: a.custom_metadata.clone().unwrap_or_default(),
                    })
                    .collect(),
                groups: direct
                    .iter()
                    .chain(inherited.iter())
                    .map(|g| template::TemplateGroup {
                        id: g.id.clone(),
                        name: g.name.clone(),
                        metadata: g.metadata.clone(),
                    })
                    .collect(),
            },
        }
    }
}

/// The store. One per unsealed core; cheap to share behind an `Arc`.
pub struct IdentityStore {
    view: StorageView,
    mirror: RwLock<Mirror>,
    stale: AtomicBool,
    /// Moves on with every change (and every invalidation).
    generation: AtomicU64,
    /// Entity id → its view at the current generation.
    views: std::sync::RwLock<HashMap<String, Arc<IdentityView>>>,
}

/// Unix nanoseconds now.
pub(crate) fn now_ns() -> i64 {
    let t = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Vault's generated names: `entity_1a2b3c4d.root`, `group_…` (the suffix
/// is OpenBao's root namespace id).
fn generated_name(kind: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{kind}_{}.root", &id[..8])
}

/// Vault's `strutil.RemoveDuplicates(list, true)`: trimmed, lower-cased,
/// empty entries dropped, sorted, deduplicated.
pub fn sanitize_list(list: &[String], lowercase: bool) -> Vec<String> {
    let mut out: Vec<String> = list
        .iter()
        .map(|s| {
            let t = s.trim();
            if lowercase {
                t.to_lowercase()
            } else {
                t.to_string()
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Vault's metadata rules (`validateMetadata`): at most 64 pairs, keys of
/// `[a-zA-Z0-9=/+_-]` up to 128 characters not starting with `vault-`,
/// values up to 512 characters.
pub fn validate_metadata(meta: &BTreeMap<String, String>) -> std::result::Result<(), String> {
    if meta.len() > 64 {
        return Err("metadata cannot contain more than 64 key/value pairs".into());
    }
    for (k, v) in meta {
        let why = if k.is_empty() {
            Some("key cannot be blank".to_string())
        } else if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "=/+_-".contains(c))
        {
            Some("key contains invalid characters".into())
        } else if k.len() > 128 {
            Some("key is too long (limit: 128 characters)".into())
        } else if k.starts_with("vault-") {
            Some("key prefix \"vault-\" is reserved for internal use".into())
        } else if v.len() > 512 {
            Some("value is too long (limit: 512 characters)".into())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!(
                "failed to load metadata pair ({k:?}, {v:?}): {why}"
            ));
        }
    }
    Ok(())
}

/// An entity change requested through the API (`None`: leave as is).
#[derive(Debug, Default)]
pub struct EntityUpdate {
    pub id: Option<String>,
    pub name: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub policies: Option<Vec<String>>,
    pub disabled: Option<bool>,
}

/// A group change requested through the API.
#[derive(Debug, Default)]
pub struct GroupUpdate {
    pub name: Option<String>,
    pub group_type: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub policies: Option<Vec<String>>,
    pub member_entity_ids: Option<Vec<String>>,
    pub member_group_ids: Option<Vec<String>>,
}

fn bad(msg: impl Into<String>) -> CoreError {
    CoreError::BadRequest(msg.into())
}

impl IdentityStore {
    pub fn new(view: StorageView) -> Self {
        IdentityStore {
            view,
            mirror: RwLock::new(Mirror::default()),
            stale: AtomicBool::new(true),
            generation: AtomicU64::new(1),
            views: std::sync::RwLock::new(HashMap::new()),
        }
    }

    /// The current generation: moves on with every change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A change happened: outdate every view (and so every per-entity ACL).
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Another node wrote under `sys/identity/`: reload before the next use.
    pub fn invalidate(&self, _key: &str) {
        self.stale.store(true, Ordering::Release);
        self.changed();
    }

    /// The mirror for writing, (re)loaded from storage if stale.
    async fn mirror_mut(&self) -> Result<RwLockWriteGuard<'_, Mirror>> {
        let mut m = self.mirror.write().await;
        if self.stale.swap(false, Ordering::AcqRel) || !m.loaded {
            let mut fresh = Mirror {
                loaded: true,
                ..Default::default()
            };
            for id in self.view.list(ENTITY_PREFIX).await? {
                if let Some(e) = self
                    .view
                    .get_json::<Entity>(&format!("{ENTITY_PREFIX}{id}"))
                    .await?
                {
                    fresh.index_entity(e);
                }
            }
            for id in self.view.list(GROUP_PREFIX).await? {
                if let Some(g) = self
                    .view
                    .get_json::<Group>(&format!("{GROUP_PREFIX}{id}"))
                    .await?
                {
                    fresh.index_group(g);
                }
            }
            *m = fresh;
            self.changed();
            self.publish_counts(&m);
        }
        Ok(m)
    }

    /// The mirror, (re)loaded from storage if stale.
    async fn mirror(&self) -> Result<tokio::sync::RwLockReadGuard<'_, Mirror>> {
        if self.stale.load(Ordering::Acquire) || !self.mirror.read().await.loaded {
            drop(self.mirror_mut().await?);
        }
        Ok(self.mirror.read().await)
    }

    fn publish_counts(&self, m: &Mirror) {
        m::gauge_set(m::IDENTITY_ENTITIES, &[], m.entities.len() as f64);
        m::gauge_set(m::IDENTITY_GROUPS, &[], m.groups.len() as f64);
    }

    /// Store an entity and index it (the caller holds the write lock).
    async fn put_entity(&self, m: &mut Mirror, e: Entity) -> Result<()> {
        self.view
            .put_json(&format!("{ENTITY_PREFIX}{}", e.id), &e)
            .await?;
        m.unindex_entity(&e.id);
        m.index_entity(e);
        self.changed();
        Ok(())
    }

    async fn put_group(&self, m: &mut Mirror, mut g: Group) -> Result<()> {
        g.modify_index += 1;
        self.view
            .put_json(&format!("{GROUP_PREFIX}{}", g.id), &g)
            .await?;
        m.unindex_group(&g.id);
        m.index_group(g);
        self.changed();
        Ok(())
    }

    /// The entity behind a login's alias on `mount`, created with the alias
    /// on first sight; the alias's metadata and the entity's external group
    /// memberships on this mount (`group_aliases` matched against the
    /// external groups' aliases on it) follow the latest login. A disabled
    /// entity may not log in.
    pub async fn entity_for_login(
        &self,
        mount: &MountEntry,
        alias: &LoginAlias,
        group_aliases: &[String],
    ) -> Result<Entity> {
        if alias.name.is_empty() {
            return Err(CoreError::Internal("missing name in alias".into()));
        }
        let key = (mount.accessor.clone(), alias.name.clone());
        {
            let m = self.mirror().await?;
            if let Some(e) = m.by_alias.get(&key).and_then(|id| m.entities.get(id)) {
                let current = e
                    .aliases
                    .iter()
                    .find(|a| a.mount_accessor == key.0 && a.name == key.1);
                if current.is_some_and(|a| a.metadata == alias.metadata)
                    && e.external_group_ids
                        == external_groups(&m, e, &mount.accessor, group_aliases)
                {
                    return check_enabled(e.clone());
                }
            }
        }
        let mut m = self.mirror_mut().await?;
        let t = now_ns();
        let mut entity = match m.by_alias.get(&key).and_then(|id| m.entities.get(id)) {
            Some(e) => e.clone(),
            None => Entity {
                id: new_id(),
                name: unused_name(&m, "entity"),
                creation_time: t,
                last_update_time: t,
                ..Default::default()
            },
        };
        let created = entity.aliases.is_empty() && !m.entities.contains_key(&entity.id);
        match entity
            .aliases
            .iter_mut()
            .find(|a| a.mount_accessor == key.0 && a.name == key.1)
        {
            Some(a) => {
                a.metadata = alias.metadata.clone();
                a.last_update_time = t;
            }
            None => entity.aliases.push(Alias {
                id: new_id(),
                canonical_id: entity.id.clone(),
                mount_accessor: mount.accessor.clone(),
                mount_type: mount.mount_type.clone(),
                mount_path: mount.path.clone(),
                name: alias.name.clone(),
                metadata: alias.metadata.clone(),
                custom_metadata: None,
                creation_time: t,
                last_update_time: t,
            }),
        }
        entity.external_group_ids = external_groups(&m, &entity, &mount.accessor, group_aliases);
        if !created {
            entity.last_update_time = t;
        }
        let out = entity.clone();
        self.put_entity(&mut m, entity).await?;
        self.publish_counts(&m);
        check_enabled(out)
    }

    /// An entity by id.
    pub async fn entity(&self, id: &str) -> Result<Option<Entity>> {
        Ok(self.mirror().await?.entities.get(id).cloned())
    }

    /// The view request checking uses for `entity_id`; `None` if there is
    /// no such entity (its tokens are refused, as Vault refuses them).
    pub async fn resolve(&self, entity_id: &str) -> Result<Option<Arc<IdentityView>>> {
        if let Some(v) = self
            .views
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(entity_id)
        {
            return Ok(Some(v.clone()));
        }
        let m = self.mirror().await?;
        let generation = self.generation();
        let Some(e) = m.entities.get(entity_id) else {
            return Ok(None);
        };
        let view = Arc::new(m.view(e, generation));
        // Writers change the mirror under its write lock; holding the read
        // lock here, only an invalidation can have moved the generation on
        // meanwhile, and then this view is not kept.
        let mut views = self.views.write().unwrap_or_else(PoisonError::into_inner);
        if self.generation() == generation {
            if views.len() >= 65_536 {
                views.clear();
            }
            views.insert(entity_id.to_string(), view.clone());
        }
        Ok(Some(view))
    }

    /// The policies an entity's tokens get from identity (Vault's
    /// `identity_policies`): the entity's own, then those of every group it
    /// is in, directly or through a parent group.
    pub async fn identity_policies(&self, entity_id: &str) -> Result<Vec<String>> {
        if entity_id.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self
            .resolve(entity_id)
            .await?
            .map(|v| v.policies.clone())
            .unwrap_or_default())
    }

    /// Entities stored (for metrics and tests).
    pub async fn entity_count(&self) -> Result<usize> {
        Ok(self.mirror().await?.entities.len())
    }

    // ---- API writes -----------------------------------------------------

    /// `identity/entity` and `entity/id|name/:x` writes (Vault's
    /// `handleEntityUpdateCommon`). `Ok(Some(entity))` when created.
    pub async fn upsert_entity(&self, u: EntityUpdate) -> Result<Option<Entity>> {
        let mut m = self.mirror_mut().await?;
        let mut entity = match u.id.as_deref().filter(|s| !s.is_empty()) {
            Some(id) => m
                .entities
                .get(id)
                .cloned()
                .ok_or_else(|| bad("entity not found from id"))?,
            None => Entity::default(),
        };
        if let Some(name) = u.name.as_deref().filter(|s| !s.is_empty()) {
            match m.entity_by_name(name) {
                None => {}
                Some(by_name) if entity.id.is_empty() => entity = by_name.clone(),
                Some(by_name) if by_name.id == entity.id => {}
                Some(_) => return Err(bad("entity name is already in use")),
            }
            entity.name = name.to_string();
        }
        if let Some(p) = &u.policies {
            entity.policies = sanitize_list(p, true);
        }
        if entity.policies.iter().any(|p| p == "root") {
            return Err(bad("policies cannot contain root"));
        }
        if let Some(d) = u.disabled {
            entity.disabled = d;
        }
        if let Some(meta) = u.metadata {
            entity.metadata = meta;
        }
        validate_metadata(&entity.metadata)
            .map_err(|e| bad(format!("invalid entity metadata: {e}")))?;
        let created = entity.id.is_empty();
        let t = now_ns();
        if created {
            entity.id = new_id();
            entity.creation_time = t;
        }
        if entity.name.is_empty() {
            entity.name = unused_name(&m, "entity");
        }
        entity.last_update_time = t;
        let out = entity.clone();
        self.put_entity(&mut m, entity).await?;
        self.publish_counts(&m);
        Ok(created.then_some(out))
    }

    /// Delete an entity (by id or name), its aliases with it, and its
    /// membership in groups. Deleting nothing succeeds.
    pub async fn delete_entity(&self, id: Option<&str>, name: Option<&str>) -> Result<()> {
        let mut m = self.mirror_mut().await?;
        let Some(id) = id
            .filter(|i| m.entities.contains_key(*i))
            .map(str::to_string)
            .or_else(|| name.and_then(|n| m.entity_by_name(n)).map(|e| e.id.clone()))
        else {
            return Ok(());
        };
        let holding: Vec<Group> = m
            .groups
            .values()
            .filter(|g| g.member_entity_ids.contains(&id))
            .cloned()
            .collect();
        for mut g in holding {
            g.member_entity_ids.retain(|e| *e != id);
            g.last_update_time = now_ns();
            self.put_group(&mut m, g).await?;
        }
        self.view.delete(&format!("{ENTITY_PREFIX}{id}")).await?;
        m.unindex_entity(&id);
        self.changed();
        self.publish_counts(&m);
        Ok(())
    }

    /// `identity/entity-alias` create or update (Vault's
    /// `handleAliasCreateUpdate`): returns (alias id, entity id), or
    /// `None` when there was nothing to change.
    pub async fn upsert_alias(
        &self,
        mounts: &(dyn Fn(&str) -> Option<MountEntry> + Sync),
        id: Option<&str>,
        name: Option<&str>,
        accessor: Option<&str>,
        canonical_id: Option<&str>,
        custom_metadata: Option<BTreeMap<String, String>>,
    ) -> Result<Option<(String, String)>> {
        if let Some(cm) = &custom_metadata {
            validate_custom_metadata(cm)?;
        }
        let mut m = self.mirror_mut().await?;
        let name = name.filter(|s| !s.is_empty());
        let accessor = accessor.filter(|s| !s.is_empty());
        let canonical_id = canonical_id.filter(|s| !s.is_empty());
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            let Some(owner) = m.entity_by_alias_id(id).cloned() else {
                return Err(bad("invalid alias ID provided"));
            };
            let Some(alias) = owner.aliases.iter().find(|a| a.id == id).cloned() else {
                return Err(bad("invalid alias ID provided"));
            };
            if name.is_none()
                && accessor.is_none()
                && canonical_id.is_none()
                && custom_metadata.is_none()
            {
                return Ok(None);
            }
            let custom = custom_metadata.or_else(|| alias.custom_metadata.clone());
            let name = name.unwrap_or(&alias.name).to_string();
            let accessor = accessor.unwrap_or(&alias.mount_accessor).to_string();
            return self
                .update_alias(
                    &mut m,
                    mounts,
                    owner,
                    alias,
                    canonical_id,
                    name,
                    accessor,
                    custom,
                )
                .await;
        }
        let (Some(name), Some(accessor)) = (name, accessor) else {
            return Err(bad("'id' or 'mount_accessor' and 'name' must be provided"));
        };
        let Some(mount) = mounts(accessor) else {
            return Err(bad(format!("invalid mount accessor {accessor:?}")));
        };
        let key = (accessor.to_string(), name.to_string());
        if let Some(owner) = m
            .by_alias
            .get(&key)
            .and_then(|eid| m.entities.get(eid))
            .cloned()
        {
            let alias = owner
                .aliases
                .iter()
                .find(|a| a.mount_accessor == accessor && a.name == name)
                .cloned()
                .unwrap_or_default();
            let custom = custom_metadata.unwrap_or_default();
            return self
                .update_alias(
                    &mut m,
                    mounts,
                    owner,
                    alias,
                    canonical_id,
                    name.to_string(),
                    accessor.to_string(),
                    Some(custom),
                )
                .await;
        }
        let t = now_ns();
        let mut entity = match canonical_id {
            Some(cid) => m
                .entities
                .get(cid)
                .cloned()
                .ok_or_else(|| bad("invalid canonical ID"))?,
            None => Entity {
                id: new_id(),
                name: unused_name(&m, "entity"),
                creation_time: t,
                last_update_time: t,
                ..Default::default()
            },
        };
        if entity.aliases.iter().any(|a| a.mount_accessor == accessor) {
            return Err(bad(
                "Alias already exists for requested entity and mount accessor",
            ));
        }
        let alias = Alias {
            id: new_id(),
            canonical_id: entity.id.clone(),
            mount_accessor: accessor.to_string(),
            mount_type: mount.mount_type.clone(),
            mount_path: mount.path.clone(),
            name: name.to_string(),
            metadata: BTreeMap::new(),
            custom_metadata: Some(custom_metadata.unwrap_or_default()),
            creation_time: t,
            last_update_time: t,
        };
        let out = (alias.id.clone(), entity.id.clone());
        entity.aliases.push(alias);
        entity.last_update_time = t;
        self.put_entity(&mut m, entity).await?;
        self.publish_counts(&m);
        Ok(Some(out))
    }

    /// Vault's `handleAliasUpdate`.
    #[allow(clippy::too_many_arguments)]
    async fn update_alias(
        &self,
        m: &mut Mirror,
        mounts: &(dyn Fn(&str) -> Option<MountEntry> + Sync),
        mut owner: Entity,
        mut alias: Alias,
        canonical_id: Option<&str>,
        name: String,
        accessor: String,
        custom: Option<BTreeMap<String, String>>,
    ) -> Result<Option<(String, String)>> {
        let moving = canonical_id.is_some_and(|c| c != alias.canonical_id);
        if name == alias.name
            && accessor == alias.mount_accessor
            && !moving
            && custom == alias.custom_metadata
        {
            return Ok(None);
        }
        if accessor != alias.mount_accessor
            && !moving
            && owner.aliases.iter().any(|a| a.mount_accessor == accessor)
        {
            return Err(bad(
                "Alias cannot be updated as the entity already has an alias for the given 'mount_accessor' ",
            ));
        }
        let Some(mount) = mounts(&accessor) else {
            return Err(bad(format!("invalid mount accessor {accessor:?}")));
        };
        if let Some(existing) = m
            .by_alias
            .get(&(accessor.clone(), name.clone()))
            .and_then(|eid| m.entities.get(eid))
            .and_then(|e| {
                e.aliases
                    .iter()
                    .find(|a| a.mount_accessor == accessor && a.name == name)
            })
            && existing.id != alias.id
        {
            return Err(bad(
                "alias with combination of mount accessor and name already exists",
            ));
        }
        alias.name = name;
        alias.mount_accessor = accessor;
        alias.mount_type = mount.mount_type.clone();
        alias.mount_path = mount.path.clone();
        alias.custom_metadata = custom;
        alias.last_update_time = now_ns();
        owner.aliases.retain(|a| a.id != alias.id);
        if moving {
            let cid = canonical_id.unwrap_or_default();
            let Some(mut target) = m.entities.get(cid).cloned() else {
                return Err(bad("given 'canonical_id' is not associated with an entity"));
            };
            if target
                .aliases
                .iter()
                .any(|a| a.mount_accessor == alias.mount_accessor)
            {
                return Err(bad(
                    "Alias cannot be updated as the given entity already has an alias for this mount ",
                ));
            }
            alias.canonical_id = target.id.clone();
            let out = (alias.id.clone(), target.id.clone());
            target.aliases.push(alias);
            owner.last_update_time = now_ns();
            target.last_update_time = owner.last_update_time;
            self.put_entity(m, owner).await?;
            self.put_entity(m, target).await?;
            Ok(Some(out))
        } else {
            let out = (alias.id.clone(), owner.id.clone());
            owner.aliases.push(alias);
            self.put_entity(m, owner).await?;
            Ok(Some(out))
        }
    }

    /// Delete an entity alias by id (deleting nothing succeeds).
    pub async fn delete_alias(&self, id: &str) -> Result<()> {
        let mut m = self.mirror_mut().await?;
        let Some(mut owner) = m.entity_by_alias_id(id).cloned() else {
            return Ok(());
        };
        owner.aliases.retain(|a| a.id != id);
        self.put_entity(&mut m, owner).await
    }

    /// `identity/group` writes (Vault's `pathGroupRegister` and
    /// `handleGroupUpdateCommon`): the group by id (must exist), else by
    /// name (created if absent). `Ok(Some(group))` when created.
    pub async fn upsert_group(&self, id: Option<&str>, u: GroupUpdate) -> Result<Option<Group>> {
        let mut m = self.mirror_mut().await?;
        let mut group = match id {
            Some("") => return Err(bad("empty group ID")),
            Some(id) => m
                .groups
                .get(id)
                .cloned()
                .ok_or_else(|| bad("invalid group ID"))?,
            None => match u.name.as_deref().filter(|n| !n.is_empty()) {
                Some(n) => m.group_by_name(n).cloned().unwrap_or_default(),
                None => Group::default(),
            },
        };
        let created = group.id.is_empty();
        if let Some(p) = &u.policies {
            group.policies = sanitize_list(p, true);
        }
        if group.policies.iter().any(|p| p == "root") {
            return Err(bad("policies cannot contain root"));
        }
        if let Some(t) = &u.group_type {
            if !group.group_type.is_empty() && *t != group.group_type {
                return Err(bad("group type cannot be changed"));
            }
            group.group_type = t.clone();
        }
        if group.group_type.is_empty() {
            group.group_type = GROUP_INTERNAL.into();
        }
        if group.group_type != GROUP_INTERNAL && group.group_type != GROUP_EXTERNAL {
            return Err(bad(format!("invalid group type {:?}", group.group_type)));
        }
        if let Some(n) = u.name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(other) = m.group_by_name(n)
                && other.id != group.id
            {
                return Err(bad("group name is already in use"));
            }
            group.name = n.to_string();
        }
        if let Some(meta) = u.metadata {
            group.metadata = meta;
        }
        if let Some(ids) = u.member_entity_ids {
            if group.group_type == GROUP_EXTERNAL {
                return Err(bad(
                    "member entities can't be set manually for external groups",
                ));
            }
            group.member_entity_ids = sanitize_list(&ids, false);
        }
        let member_groups = match u.member_group_ids {
            Some(ids) => {
                if group.group_type == GROUP_EXTERNAL {
                    return Err(bad("member groups can't be set for external groups"));
                }
                Some(sanitize_list(&ids, false))
            }
            None => None,
        };
        validate_metadata(&group.metadata)
            .map_err(|e| bad(format!("invalid group metadata: {e}")))?;
        for eid in &group.member_entity_ids {
            if !m.entities.contains_key(eid) {
                return Err(bad(format!("invalid entity ID {eid:?}")));
            }
        }
        let t = now_ns();
        if created {
            group.id = new_id();
            group.creation_time = t;
        }
        if let Some(ids) = member_groups {
            for mid in &ids {
                if !m.groups.contains_key(mid) {
                    return Err(bad(format!("invalid member group ID {mid:?}")));
                }
                if *mid == group.id {
                    return Err(bad(format!(
                        "member group ID {:?} is same as the ID of the group",
                        group.id
                    )));
                }
                if !group.member_group_ids.contains(mid) && m.reaches(mid, &group.id) {
                    return Err(bad(format!(
                        "cyclic relationship detected for member group ID {mid:?}"
                    )));
                }
            }
            group.member_group_ids = ids;
        }
        if group.name.is_empty() {
            group.name = unused_name(&m, "group");
        }
        group.last_update_time = t;
        let out = group.clone();
        self.put_group(&mut m, group).await?;
        self.publish_counts(&m);
        Ok(created.then_some(out))
    }

    /// Delete a group by id or name (deleting nothing succeeds); it stops
    /// being a member of its parents.
    pub async fn delete_group(&self, id: Option<&str>, name: Option<&str>) -> Result<()> {
        let mut m = self.mirror_mut().await?;
        let gid = match (id, name) {
            (Some(id), _) => m.groups.get(id).map(|g| g.id.clone()),
            (None, Some(n)) => m.group_by_name(n).map(|g| g.id.clone()),
            _ => None,
        };
        let Some(gid) = gid else { return Ok(()) };
        let parents: Vec<Group> = m.parents_of(&gid).into_iter().cloned().collect();
        for mut p in parents {
            p.member_group_ids.retain(|c| *c != gid);
            p.last_update_time = now_ns();
            self.put_group(&mut m, p).await?;
        }
        self.view.delete(&format!("{GROUP_PREFIX}{gid}")).await?;
        m.unindex_group(&gid);
        self.changed();
        self.publish_counts(&m);
        Ok(())
    }

    /// `identity/group-alias` create or update (Vault's
    /// `handleGroupAliasUpdateCommon`): returns (alias id, group id), or
    /// `None` when nothing changed.
    pub async fn upsert_group_alias(
        &self,
        mounts: &(dyn Fn(&str) -> Option<MountEntry> + Sync),
        id: Option<&str>,
        name: &str,
        accessor: &str,
        canonical_id: &str,
    ) -> Result<Option<(String, String)>> {
        let mut m = self.mirror_mut().await?;
        let (mut alias, previous) = match id {
            Some("") => return Err(bad("empty group alias ID")),
            Some(id) => {
                let g = m
                    .group_by_alias_id(id)
                    .cloned()
                    .ok_or_else(|| bad("invalid group alias ID"))?;
                (g.alias.clone().unwrap_or_default(), Some(g))
            }
            None => (Alias::default(), None),
        };
        if name.is_empty() {
            return Err(bad("missing alias name"));
        }
        if accessor.is_empty() {
            return Err(bad("missing mount_accessor"));
        }
        if alias.name == name
            && alias.mount_accessor == accessor
            && (canonical_id.is_empty() || alias.canonical_id == canonical_id)
        {
            return Ok(None);
        }
        let mut target = None;
        if !canonical_id.is_empty() {
            let g = m
                .groups
                .get(canonical_id)
                .cloned()
                .ok_or_else(|| bad("invalid group ID given in 'canonical_id'"))?;
            if g.group_type != GROUP_EXTERNAL {
                return Err(bad("alias can't be set on an internal group"));
            }
            target = Some(g);
        }
        let Some(mount) = mounts(accessor) else {
            return Err(bad(format!("invalid mount accessor {accessor:?}")));
        };
        if mount.local {
            return Err(bad(format!("mount accessor {accessor:?} is a local mount")));
        }
        if let Some(other) = m.group_by_alias(accessor, name)
            && other.alias.as_ref().map(|a| a.id.as_str()) != Some(alias.id.as_str())
        {
            return Err(bad(
                "combination of mount and group alias name is already in use",
            ));
        }
        let t = now_ns();
        if alias.id.is_empty() {
            alias.id = new_id();
            alias.creation_time = t;
        }
        alias.name = name.to_string();
        alias.mount_accessor = accessor.to_string();
        alias.mount_type = mount.mount_type.clone();
        alias.mount_path = mount.path.clone();
        alias.last_update_time = t;
        let mut group = match (target, previous) {
            (Some(tg), Some(mut prev)) if tg.id != prev.id => {
                prev.alias = None;
                prev.last_update_time = t;
                self.put_group(&mut m, prev).await?;
                tg
            }
            (Some(tg), _) => tg,
            (None, Some(prev)) => prev,
            (None, None) => Group {
                id: new_id(),
                name: unused_name(&m, "group"),
                group_type: GROUP_EXTERNAL.into(),
                creation_time: t,
                ..Default::default()
            },
        };
        alias.canonical_id = group.id.clone();
        let out = (alias.id.clone(), group.id.clone());
        group.alias = Some(alias);
        group.last_update_time = t;
        self.put_group(&mut m, group).await?;
        self.publish_counts(&m);
        Ok(Some(out))
    }

    /// Delete a group alias by id (deleting nothing succeeds).
    pub async fn delete_group_alias(&self, id: &str) -> Result<()> {
        let mut m = self.mirror_mut().await?;
        let Some(mut g) = m.group_by_alias_id(id).cloned() else {
            return Ok(());
        };
        g.alias = None;
        g.last_update_time = now_ns();
        self.put_group(&mut m, g).await
    }
}

/// Vault's `custommetadata.Validate`: at most 64 pairs, keys up to 128
/// bytes, values up to 512.
fn validate_custom_metadata(cm: &BTreeMap<String, String>) -> Result<()> {
    if cm.len() > 64 {
        return Err(bad("payload must contain at most 64 keys"));
    }
    for (k, v) in cm {
        if k.len() > 128 {
            return Err(bad(format!("length of key {k:?} is greater than 128")));
        }
        if v.len() > 512 {
            return Err(bad(format!(
                "length of value for key {k:?} is greater than 512"
            )));
        }
    }
    Ok(())
}

/// A generated entity or group name no other one has.
fn unused_name(m: &Mirror, kind: &str) -> String {
    loop {
        let n = generated_name(kind);
        let taken = match kind {
            "entity" => m.entity_by_name(&n).is_some(),
            _ => m.group_by_name(&n).is_some(),
        };
        if !taken {
            return n;
        }
    }
}

/// The entity's external groups after a login on `accessor` that named
/// `names`: memberships through other mounts stay, those through this
/// mount are what this login says (Vault's
/// `RefreshExternalGroupMembershipsByEntityID`). Sorted.
fn external_groups(m: &Mirror, e: &Entity, accessor: &str, names: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = e
        .external_group_ids
        .iter()
        .filter(|id| {
            m.groups.get(*id).is_some_and(|g| {
                g.alias
                    .as_ref()
                    .is_some_and(|a| a.mount_accessor != accessor)
            })
        })
        .cloned()
        .collect();
    ids.extend(
        m.groups
            .values()
            .filter(|g| {
                g.group_type == GROUP_EXTERNAL
                    && g.alias
                        .as_ref()
                        .is_some_and(|a| a.mount_accessor == accessor && names.contains(&a.name))
            })
            .map(|g| g.id.clone()),
    );
    ids.sort();
    ids.dedup();
    ids
}

fn check_enabled(e: Entity) -> Result<Entity> {
    if e.disabled {
        return Err(CoreError::PermissionDenied);
    }
    Ok(e)
}

/// The ACL a request is checked against for `entry` (the pipeline's and
/// `sys/capabilities*`'s one entry point): the token's policies, and for a
/// token with an entity also the entity's and its groups' policies with
/// identity templates filled. A token whose entity is disabled or gone is
/// refused, as Vault refuses it ("permission denied").
pub async fn token_acl(
    u: &crate::core::Unsealed,
    entry: &crate::token::TokenEntry,
) -> Result<Arc<crate::policy::Acl>> {
    if entry.entity_id.is_empty() {
        return u.policies.acl_for(&entry.policies).await;
    }
    let Some(view) = u.identity.resolve(&entry.entity_id).await? else {
        tracing::warn!("permission denied as the entity on the token is invalid");
        return Err(CoreError::PermissionDenied);
    };
    if view.disabled {
        tracing::warn!("permission denied as the entity on the token is disabled");
        return Err(CoreError::PermissionDenied);
    }
    u.policies.acl_for_identity(&entry.policies, &view).await
}

/// What a token lookup adds for a token with an entity (Vault's
/// `handleLookup`): `identity_policies` and `external_namespace_policies`
/// when identity gives the token any policy; nothing otherwise, so the
/// lookup of a token without an entity keeps exactly its keys.
pub async fn lookup_additions(
    identity: &IdentityStore,
    entity_id: &str,
    data: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    if entity_id.is_empty() {
        return Ok(());
    }
    let policies = identity.identity_policies(entity_id).await?;
    if !policies.is_empty() {
        data.insert("identity_policies".into(), serde_json::json!(policies));
        data.insert(
            "external_namespace_policies".into(),
            serde_json::Value::Object(serde_json::Map::new()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
