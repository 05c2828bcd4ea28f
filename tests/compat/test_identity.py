"""The identity API through hvac (`client.secrets.identity`) and raw HTTP,
against OpenBao and Custos side by side: entities and aliases created by
userpass logins and by hand, internal (nested) and external groups with
group aliases, `identity_policies` on tokens, templated ACL paths, and bad
input refused with OpenBao's status and wording. Key sets below were
observed on OpenBao 2.7.2."""

from __future__ import annotations

from compat_lib import Target, assert_error, assert_keys, uniq

ENTITY_KEYS = {
    "aliases",
    "creation_time",
    "direct_group_ids",
    "disabled",
    "group_ids",
    "id",
    "inherited_group_ids",
    "last_update_time",
    "merged_entity_ids",
    "metadata",
    "name",
    "namespace_id",
    "policies",
}
ENTITY_ALIAS_KEYS = {
    "canonical_id",
    "creation_time",
    "custom_metadata",
    "id",
    "last_update_time",
    "local",
    "merged_from_canonical_ids",
    "metadata",
    "mount_accessor",
    "mount_path",
    "mount_type",
    "name",
}
ALIAS_READ_KEYS = ENTITY_ALIAS_KEYS | {"namespace_id"}
GROUP_KEYS = {
    "alias",
    "creation_time",
    "id",
    "last_update_time",
    "member_entity_ids",
    "member_group_ids",
    "metadata",
    "modify_index",
    "name",
    "namespace_id",
    "parent_group_ids",
    "policies",
    "type",
}
GROUP_ALIAS_KEYS = {
    "canonical_id",
    "creation_time",
    "id",
    "last_update_time",
    "merged_from_canonical_ids",
    "metadata",
    "mount_accessor",
    "mount_path",
    "mount_type",
    "name",
}


def userpass(t: Target, policies: str = "default") -> tuple[str, str, str]:
    """A fresh userpass mount with one user; (mount, accessor, user)."""
    mount = uniq("idup")
    r = t.http("POST", f"sys/auth/{mount}", json_body={"type": "userpass"})
    assert r.status_code == 204, r.text
    user = uniq("u")
    r = t.http("POST", f"auth/{mount}/users/{user}", json_body={"password": "pw", "token_policies": policies})
    assert r.status_code == 204, r.text
    accessor = t.http("GET", "sys/auth").json()["data"][f"{mount}/"]["accessor"]
    return mount, accessor, user


def login(t: Target, mount: str, user: str) -> dict:
    r = t.http("POST", f"auth/{mount}/login/{user}", token=None, json_body={"password": "pw"})
    assert r.status_code == 200, f"{t.name}: login {r.status_code} {r.text}"
    return r.json()["auth"]


def test_login_entity_and_alias_shapes(target: Target) -> None:
    mount, accessor, user = userpass(target)
    auth = login(target, mount, user)
    eid = auth["entity_id"]
    ident = target.client().secrets.identity
    e = ident.read_entity(entity_id=eid)["data"]
    assert_keys(e, ENTITY_KEYS, "entity read")
    assert e["name"].startswith("entity_") and e["namespace_id"] == "root"
    assert e["policies"] == [] and e["metadata"] is None and e["merged_entity_ids"] is None
    assert (e["direct_group_ids"], e["inherited_group_ids"], e["group_ids"]) == ([], [], [])
    (a,) = e["aliases"]
    assert_keys(a, ENTITY_ALIAS_KEYS, "entity alias in entity read")
    assert (a["name"], a["mount_accessor"], a["mount_path"], a["mount_type"]) == (
        user,
        accessor,
        f"auth/{mount}/",
        "userpass",
    )
    assert a["custom_metadata"] is None and a["metadata"] is None and a["local"] is False
    one = ident.read_entity_alias(alias_id=a["id"])["data"]
    assert_keys(one, ALIAS_READ_KEYS, "entity-alias read")
    assert one["canonical_id"] == eid
    listed = ident.list_entities()["data"]
    assert eid in listed["keys"]
    assert set(listed["key_info"][eid]) == {"name", "aliases"}
    assert set(listed["key_info"][eid]["aliases"][0]) == {"id", "name", "mount_accessor", "mount_path", "mount_type"}
    aliases = ident.list_entity_aliases()["data"]
    assert set(aliases["key_info"][a["id"]]) == {
        "canonical_id",
        "custom_metadata",
        "local",
        "metadata",
        "mount_accessor",
        "mount_path",
        "mount_type",
        "name",
    }
    found = ident.lookup_entity(alias_name=user, alias_mount_accessor=accessor)["data"]
    assert found["id"] == eid
    # Names list: keys only.
    names = target.http("LIST", "identity/entity/name").json()["data"]
    assert set(names) == {"keys"} and e["name"] in names["keys"]


def test_entity_crud_through_hvac(target: Target) -> None:
    ident = target.client().secrets.identity
    name = uniq("ent")
    created = ident.create_or_update_entity(name=name, metadata={"team": "a"}, policies=["P2", "p2"])
    assert set(created["data"]) == {"id", "name", "aliases"}
    assert created["data"]["aliases"] is None and created["data"]["name"] == name
    eid = created["data"]["id"]
    # An update answers 204.
    r = target.http("POST", "identity/entity", json_body={"name": name, "policies": "x"})
    assert r.status_code == 204, r.text
    e = ident.read_entity_by_name(name=name)["data"]
    assert (e["id"], e["policies"], e["metadata"]) == (eid, ["x"], {"team": "a"})
    alias_name = uniq("al")
    _, accessor, _ = userpass(target)
    made = ident.create_or_update_entity_alias(name=alias_name, canonical_id=eid, mount_accessor=accessor)
    assert set(made["data"]) == {"id", "canonical_id"} and made["data"]["canonical_id"] == eid
    # The same alias again changes nothing (204); another on this mount is refused.
    r = target.http("POST", "identity/entity-alias", json_body={"name": alias_name, "mount_accessor": accessor})
    assert r.status_code == 204, r.text
    r = target.http(
        "POST",
        "identity/entity-alias",
        json_body={"name": uniq("al"), "mount_accessor": accessor, "canonical_id": eid},
    )
    assert_error(r, 400, "second alias on a mount", "Alias already exists for requested entity and mount accessor")
    r = target.http("DELETE", f"identity/entity/id/{eid}")
    assert r.status_code == 204
    assert target.http("GET", f"identity/entity/id/{eid}").status_code == 404


def test_groups_nested_and_identity_policies_on_tokens(target: Target) -> None:
    mount, _, user = userpass(target)
    auth = login(target, mount, user)
    eid, tok = auth["entity_id"], auth["client_token"]
    ident = target.client().secrets.identity
    me = target.http("GET", "auth/token/lookup-self", token=tok).json()["data"]
    assert "identity_policies" not in me and "external_namespace_policies" not in me
    r = target.http("POST", f"identity/entity/id/{eid}", json_body={"policies": ["ep1"]})
    assert r.status_code == 204
    child = ident.create_or_update_group(name=uniq("child"), policies=["cp"], member_entity_ids=[eid])["data"]
    assert set(child) == {"id", "name"}
    parent = ident.create_or_update_group(name=uniq("parent"), policies=["pp"], member_group_ids=[child["id"]])["data"]
    g = ident.read_group(group_id=child["id"])["data"]
    assert_keys(g, GROUP_KEYS, "group read")
    assert g["alias"] == {} and g["type"] == "internal" and g["namespace_id"] == "root"
    assert (g["member_entity_ids"], g["parent_group_ids"], g["member_group_ids"]) == ([eid], [parent["id"]], None)
    p = ident.read_group_by_name(name=parent["name"])["data"]
    assert p["member_group_ids"] == [child["id"]] and p["parent_group_ids"] is None
    e = ident.read_entity(entity_id=eid)["data"]
    assert e["direct_group_ids"] == [child["id"]]
    assert e["inherited_group_ids"] == [parent["id"]]
    me = target.http("GET", "auth/token/lookup-self", token=tok).json()["data"]
    assert me["identity_policies"] == ["ep1", "cp", "pp"]
    assert me["external_namespace_policies"] == {}
    r = target.http("POST", f"identity/group/id/{child['id']}", json_body={"member_group_ids": [parent["id"]]})
    assert_error(r, 400, "group cycle", "cyclic relationship detected for member group ID")
    listed = target.http("LIST", "identity/group/id").json()["data"]
    assert set(listed["key_info"][child["id"]]) == {"name", "num_member_entities", "num_parent_groups"}
    assert listed["key_info"][child["id"]]["num_parent_groups"] == 1


def test_external_group_alias(target: Target) -> None:
    _, accessor, _ = userpass(target)
    ident = target.client().secrets.identity
    ext = ident.create_or_update_group(name=uniq("ext"), group_type="external", policies=["ep"])["data"]
    made = ident.create_or_update_group_alias(name=uniq("devs"), mount_accessor=accessor, canonical_id=ext["id"])
    assert set(made["data"]) == {"id", "canonical_id"} and made["data"]["canonical_id"] == ext["id"]
    ga = ident.read_group_alias(alias_id=made["data"]["id"])["data"]
    assert_keys(ga, ALIAS_READ_KEYS, "group-alias read")
    g = ident.read_group(group_id=ext["id"])["data"]
    assert_keys(g["alias"], GROUP_ALIAS_KEYS, "group alias in group read")
    assert g["type"] == "external"
    r = target.http("POST", "identity/group-alias", json_body={"name": ga["name"], "mount_accessor": accessor})
    assert_error(r, 400, "duplicate group alias", "combination of mount and group alias name is already in use")
    r = target.http("POST", f"identity/group/id/{ext['id']}", json_body={"member_entity_ids": ["x"]})
    assert_error(r, 400, "members of external group", "member entities can't be set manually for external groups")
    internal = ident.create_or_update_group(name=uniq("int"))["data"]
    r = target.http(
        "POST",
        "identity/group-alias",
        json_body={"name": uniq("x"), "mount_accessor": accessor, "canonical_id": internal["id"]},
    )
    assert_error(r, 400, "alias on internal group", "alias can't be set on an internal group")


def test_templated_policy_paths(target: Target) -> None:
    pol = uniq("tpl")
    mount, accessor, user = userpass(target, policies=pol)
    text = (
        f'path "secret/data/{pol}/{{{{identity.entity.aliases.{accessor}.name}}}}/*" '
        '{ capabilities = ["read", "update"] }\n'
        f'path "secret/data/{pol}/meta/{{{{identity.entity.metadata.missing}}}}" {{ capabilities = ["read"] }}\n'
    )
    r = target.http("PUT", f"sys/policies/acl/{pol}", json_body={"policy": text})
    assert r.status_code == 204, r.text
    auth = login(target, mount, user)
    caps = target.http(
        "POST",
        "sys/capabilities-self",
        token=auth["client_token"],
        json_body={
            "paths": [
                f"secret/data/{pol}/{user}/x",
                f"secret/data/{pol}/other/x",
                f"identity/entity/id/{auth['entity_id']}",
            ]
        },
    ).json()["data"]
    assert caps[f"secret/data/{pol}/{user}/x"] == ["read", "update"]
    assert caps[f"secret/data/{pol}/other/x"] == ["deny"]
    assert caps[f"identity/entity/id/{auth['entity_id']}"] == ["read"]
    bad = 'path "secret/{{identity.entity.id" { capabilities = ["read"] }'
    r = target.http("PUT", f"sys/policies/acl/{uniq('bad')}", json_body={"policy": bad})
    want = "failed to validate policy templating: unbalanced templating characters"
    assert_error(r, 400, "unbalanced template", want)


def test_bad_identity_input(target: Target) -> None:
    _, accessor, _ = userpass(target)
    cases = [
        ("identity/entity", {"id": "nope"}, "entity not found from id"),
        ("identity/entity", {"name": uniq("x"), "policies": ["root"]}, "policies cannot contain root"),
        (
            "identity/entity",
            {"name": uniq("x"), "metadata": ["a=b", "c"]},
            'error converting input for field "metadata": invalid key pair at index 1',
        ),
        ("identity/entity-alias", {"name": "b", "mount_accessor": "auth_nope"}, 'invalid mount accessor "auth_nope"'),
        ("identity/entity-alias", {"name": "b"}, "'id' or 'mount_accessor' and 'name' must be provided"),
        (
            "identity/entity-alias",
            {"name": uniq("c"), "mount_accessor": accessor, "canonical_id": "nope"},
            "invalid canonical ID",
        ),
        ("identity/group", {"name": uniq("g"), "type": "weird"}, 'invalid group type "weird"'),
        ("identity/group-alias", {"name": "d", "mount_accessor": "auth_nope"}, 'invalid mount accessor "auth_nope"'),
        ("identity/lookup/entity", {}, "query parameter not supplied"),
        ("identity/lookup/entity", {"alias_name": "b"}, "both 'alias_name' and 'alias_mount_accessor' needs to be set"),
    ]
    for path, body, want in cases:
        assert_error(target.http("POST", path, json_body=body), 400, f"{path} {body}", want)
    assert target.http("GET", "identity/entity/id/nope").status_code == 404
    assert target.http("GET", "identity/group/name/nope").status_code == 404
    assert target.http("POST", "identity/lookup/entity", json_body={"name": "nope"}).status_code == 204
    assert target.http("GET", "identity/entity/id/nope", token=None).status_code == 403
