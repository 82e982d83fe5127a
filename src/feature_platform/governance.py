"""Who may read what: team identities, Feast ``Permission`` objects derived from the contracts, PII masking.

- **Identity.** A caller is a team. The feature server and `featurectl historical/export` take it from a signed
  token (HS256 JWT, ``roles: [team]``, key from the Secret the environment's ``access.token_key_env`` names;
  `featurectl token` issues them). Feast's own clients send one with ``auth: {type: oidc, token_env_var: ...}``.
  Where the environment has no token key (local, an open dev), ``--team`` names the team unauthenticated.
- **Read access.** Each live contract version yields a Feast ``Permission`` on its feature view and services
  (``<view>_readers``: owner team + ``access.readers`` + the platform's own checks, actions describe/read
  online/read offline). An environment with ``access.default: allow`` (dev) adds ``<project>_open_read`` for the
  role every caller holds; ``deny`` (prod) does not, so a team no contract names reads nothing. Decisions are
  Feast's own (``enforce_policy``).
- **PII.** Features marked ``pii: true`` (every feature of a ``pii: true`` set without per-feature marks) leave
  the platform masked unless the caller's team is the owner or in ``access.pii_readers``: HMAC-SHA256 with the
  environment's key (``access.pii_key_env``), so equal values stay joinable and nothing is reversible, or
  dropped where the environment has no key. Online, a team outside pii_readers is refused PII features.

The object store's IAM stays the hard boundary (the prod bucket is readable by the platform's workload identity
only); these checks are what the platform's interfaces enforce.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from feature_platform.contracts import ContractSet, FeatureSetContract
from feature_platform.environments import EnvironmentContract, Settings
from feature_platform.errors import AccessDenied, ConfigError

TOKEN_ISSUER = "feature-platform"
TOKEN_VARIABLE = "FEATURE_PLATFORM_TOKEN"  # a caller's token for the CLI (Feast clients: token_env_var)
TEAM_VARIABLE = "FEATURE_PLATFORM_TEAM"  # unauthenticated team, only where the environment has no token key
PII_TAG = "feature_platform.pii_features"
PII_READERS_TAG = "feature_platform.pii_readers"


@dataclass(frozen=True)
class Caller:
    team: str | None  # None: anonymous
    subject: str = "anonymous"
    authenticated: bool = False
    expires_at: float = 0.0  # epoch seconds, for verified tokens

    @property
    def roles(self) -> list[str]:
        return [self.team, EVERYONE] if self.team else [EVERYONE]

    def feast_user(self) -> Any:
        from feast.permissions.user import User

        return User(username=self.subject, roles=self.roles)

    def describe(self) -> str:
        return f"team {self.team}" if self.team else "an anonymous caller"


# The role every caller holds: what an open environment's permission grants. (Feast 0.67 cannot read back a
# Permission with its AllowAll policy from the registry, so openness is a role-based policy too.)
EVERYONE = "all-callers"
PLATFORM_TEAM = "feature-platform"  # the platform's own checks (helm test, proof) read every view
ANONYMOUS = Caller(None)
PLATFORM = Caller(PLATFORM_TEAM, PLATFORM_TEAM, True)


# --------------------------------------------------------------------------------------------------- tokens


def _key(settings: Settings, variable: str | None, what: str) -> bytes | None:
    if not variable:
        return None
    value = settings.values.get(variable)
    if not value:
        raise ConfigError(f"environment variable {variable} is not set; it must hold the {what} (from the "
                          "environment's governance Secret); the environment contract names it")
    if len(value.encode()) < MIN_KEY_BYTES:
        raise ConfigError(f"environment variable {variable} holds a key of {len(value.encode())} bytes; the {what} "
                          f"needs at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)")
    return value.encode()


MIN_KEY_BYTES = 32  # HS256 and HMAC-SHA256 keys shorter than the hash are guessable (RFC 7518 3.2)


def token_key(settings: Settings, env: EnvironmentContract) -> bytes | None:
    return _key(settings, env.access.token_key_env, "key that signs team tokens")


def pii_key(settings: Settings, env: EnvironmentContract) -> bytes | None:
    return _key(settings, env.access.pii_key_env, "key that masks PII (HMAC-SHA256)")


def issue_token(key: bytes, team: str, environment: str, subject: str | None = None,
                ttl_seconds: int = 30 * 86400) -> str:
    """A team token for one environment (its name is the audience: a dev token never opens prod)."""
    import jwt

    now = int(time.time())
    claims = {"iss": TOKEN_ISSUER, "aud": environment, "sub": subject or team, "roles": [team], "iat": now,
              "exp": now + ttl_seconds}
    return jwt.encode(claims, key, algorithm="HS256")


def verify_token(key: bytes, token: str, environment: str) -> Caller:
    """The caller a token names; AccessDenied (401) for a bad signature, another environment's, an expired or a
    malformed token."""
    import jwt

    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], issuer=TOKEN_ISSUER, audience=environment,
                            options={"require": ["exp", "sub", "roles", "aud"]})
    except jwt.ExpiredSignatureError:
        raise AccessDenied("the token has expired; ask for a new one (`featurectl token`)", 401) from None
    except jwt.InvalidTokenError as exc:
        raise AccessDenied(f"the token is not valid here ({exc}); use one issued for this environment", 401
                           ) from None
    roles = claims.get("roles")
    if not isinstance(roles, list) or len(roles) != 1 or not isinstance(roles[0], str):
        raise AccessDenied("the token must name exactly one team in its roles claim", 401)
    return Caller(roles[0], str(claims["sub"]), True, float(claims["exp"]))


def caller_from_bearer(env: EnvironmentContract, key: bytes | None, authorization: str | None) -> Caller:
    """The feature server's identity check for one request."""
    if not authorization:
        if env.access.default == "deny":
            raise AccessDenied("no token: send `Authorization: Bearer <token>` (a team token for this environment)",
                               401)
        return ANONYMOUS
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AccessDenied("the Authorization header must be `Bearer <token>`", 401)
    if key is None:
        return ANONYMOUS  # this environment has no token key: tokens carry no weight, access is open
    return verify_token(key, token.strip(), env.name)


def caller_from_cli(settings: Settings, env: EnvironmentContract, team: str | None = None,
                    token: str | None = None) -> Caller:
    """A CLI user's identity: a token where the environment signs them (required when it denies by default),
    else the team named by --team / FEATURE_PLATFORM_TEAM, else anonymous."""
    token = token or settings.values.get(TOKEN_VARIABLE)
    team = team or settings.values.get(TEAM_VARIABLE)
    key = token_key(settings, env) if env.access.token_key_env else None
    if token and key is not None:
        return verify_token(key, token, env.name)
    if key is not None and env.access.default == "deny":
        raise AccessDenied(f"{env.name} needs a signed team token: set {TOKEN_VARIABLE} (or --token) to the token "
                           "`featurectl token --team TEAM` issued for your team", 401)
    return Caller(team, team or "anonymous", False) if team else ANONYMOUS


# ------------------------------------------------------------------------------------------- Feast permissions


def view_permission(contract: FeatureSetContract, service_names: list[str]) -> Any:
    from feast import FeatureService, FeatureView
    from feast.permissions.action import AuthzedAction
    from feast.permissions.permission import Permission
    from feast.permissions.policy import RoleBasedPolicy

    names = sorted({contract.feature_view_name, *service_names})
    return Permission(
        name=f"{contract.feature_view_name}_readers",
        types=_feast_types(FeatureView, FeatureService),
        name_patterns=[f"^{name}$" for name in names],
        actions=[AuthzedAction.DESCRIBE, AuthzedAction.READ_ONLINE, AuthzedAction.READ_OFFLINE],
        policy=RoleBasedPolicy(roles=[*contract.reader_teams, PLATFORM_TEAM]),  # + the platform's own checks
        tags={"feature_platform.owner_team": contract.owner_team,
              PII_TAG: ",".join(contract.pii_features),
              PII_READERS_TAG: ",".join(sorted({contract.owner_team, *contract.access.pii_readers, PLATFORM_TEAM}))},
    )


def _feast_types(*classes: type) -> Any:
    """Feast's ``Permission(types=...)`` takes classes; its annotation says instances."""
    return list(classes)


def open_permission(env: EnvironmentContract) -> Any:
    from feast import FeatureService, FeatureView
    from feast.permissions.action import AuthzedAction
    from feast.permissions.permission import Permission
    from feast.permissions.policy import RoleBasedPolicy

    return Permission(name=f"{env.feast_project}_open_read", types=_feast_types(FeatureView, FeatureService),
                      actions=[AuthzedAction.DESCRIBE, AuthzedAction.READ_ONLINE, AuthzedAction.READ_OFFLINE],
                      policy=RoleBasedPolicy(roles=[EVERYONE]),
                      tags={"feature_platform.access": "open (access.default: allow)"})


def model_permission(contracts: ContractSet, model: Any) -> Any:
    """Who may read a model's feature service: only teams that may read every feature set in it."""
    from feast import FeatureService
    from feast.permissions.action import AuthzedAction
    from feast.permissions.permission import Permission
    from feast.permissions.policy import RoleBasedPolicy

    sets = [c for c, _ in contracts.resolve(model)]
    readers = set.intersection(*(set(c.reader_teams) for c in sets))
    return Permission(
        name=f"{model.service_name}_readers", types=_feast_types(FeatureService),
        name_patterns=[f"^{model.service_name}$"],
        actions=[AuthzedAction.DESCRIBE, AuthzedAction.READ_ONLINE, AuthzedAction.READ_OFFLINE],
        policy=RoleBasedPolicy(roles=sorted(readers | {PLATFORM_TEAM})),
        tags={"feature_platform.owner_team": model.owner_team,
              "feature_platform.feature_sets": ",".join(c.feature_view_name for c in sets)})


def permissions(env: EnvironmentContract, contracts: ContractSet, selected: list[FeatureSetContract],
                models: list[Any] = ()) -> list[Any]:  # type: ignore[assignment]
    """The Permission objects of ``selected`` live contract versions and of ``models``' services (plus the open
    one where allowed)."""
    aliases = {c.feature_view_name: [c.name] for c in contracts.latest_versions() if c.latest_alias}
    wanted = [view_permission(c, aliases.get(c.feature_view_name, [])) for c in selected]
    wanted += [model_permission(contracts, m) for m in models]
    if env.access.default == "allow":
        wanted.append(open_permission(env))
    return wanted


def permission_fingerprint(permission: Any) -> bytes:
    return permission.to_proto().spec.SerializeToString(deterministic=True)


def may_read(permissions_: list[Any], caller: Caller, resource: Any, online: bool) -> tuple[bool, str]:
    """Feast's decision for ``caller`` reading ``resource`` (a FeatureView or FeatureService)."""
    from feast.errors import FeastPermissionError
    from feast.permissions.action import AuthzedAction
    from feast.permissions.enforcer import enforce_policy

    action = AuthzedAction.READ_ONLINE if online else AuthzedAction.READ_OFFLINE
    try:
        enforce_policy(permissions_, caller.feast_user(), [resource], [action])
    except FeastPermissionError as exc:
        return False, str(exc).splitlines()[0][:300] if str(exc) else "denied"
    return True, ""


def sees_pii(contract: FeatureSetContract, caller: Caller) -> bool:
    return caller.team is not None and caller.team in {contract.owner_team, *contract.access.pii_readers,
                                                         *([PLATFORM_TEAM] if caller.authenticated else [])}


def platform_token(settings: Settings, env: EnvironmentContract, purpose: str) -> str | None:
    """A five-minute token for the platform's own checks, where the environment signs tokens."""
    key = token_key(settings, env) if env.access.token_key_env and settings.values.get(
        env.access.token_key_env) else None
    return issue_token(key, PLATFORM_TEAM, env.name, purpose, 300) if key else None


# ------------------------------------------------------------------------------------------------------- PII


def masking_key(settings: Settings, env: EnvironmentContract, contract: FeatureSetContract, caller: Caller
                ) -> bytes | None:
    """The PII key, read only when something must be masked (a named but missing key then fails closed)."""
    if not contract.pii_features or sees_pii(contract, caller):
        return None
    return pii_key(settings, env)


def mask_value(key: bytes, value: Any) -> str | None:
    """HMAC-SHA256 of the value's canonical text: equal values give equal tokens (joins and counts still work),
    nothing can be reversed without the key, and another environment's key gives other tokens."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def mask_frame(frame: Any, contract: FeatureSetContract, caller: Caller, key: bytes | None,
               column_of: dict[str, str] | None = None) -> tuple[Any, dict[str, list[str]]]:
    """``frame`` with the contract's PII features masked (or dropped without a key) unless ``caller`` may see
    them; returns (frame, {"masked": [...], "dropped": [...]}) for the export's provenance. ``column_of`` maps a
    feature to its column where the frame names it otherwise (a feature service's full feature names)."""
    names = column_of or {}
    present = [names.get(f, f) for f in contract.pii_features if names.get(f, f) in frame.columns]
    if not present or sees_pii(contract, caller):
        return frame, {"masked": [], "dropped": []}
    if key is None:
        return frame.drop(columns=present), {"masked": [], "dropped": present}
    out = frame.copy()
    for name in present:
        out[name] = [mask_value(key, v) for v in out[name].astype(object).where(out[name].notna(), None)]
        out[name] = out[name].astype("string")
    return out, {"masked": present, "dropped": []}


def check_offline_read(settings: Settings, env: EnvironmentContract, contract: FeatureSetContract,
                       caller: Caller, action: str | None = None) -> None:
    """historical/export: Feast's decision on the contract's Permission (as registered), else AccessDenied.
    With ``action`` a refusal is also written to the audit trail."""
    from feast import FeatureView

    wanted = permissions(env, settings.contracts(), [contract])
    resource = FeatureView(name=contract.feature_view_name, source=_placeholder_source(contract), schema=[])
    allowed, why = may_read(wanted, caller, resource, online=False)
    if not allowed:
        if action:
            record_read(settings, env, contract, caller, action, None, denied=why)
        raise AccessDenied(f"{caller.describe()} may not read {contract.feature_view_name} ({env.name}): readers are "
                           f"{', '.join(contract.reader_teams)}; {why}")


@dataclass(frozen=True)
class ReadPart:
    """One feature-set version's share of an offline read."""

    contract: FeatureSetContract
    build_id: str
    features: list[str]  # the features read
    column_of: dict[str, str] | None = None  # feature -> output column, where they differ (full feature names)


def release(settings: Settings, env: EnvironmentContract, frame: Any, caller: Caller, action: str,
            provenance: dict[str, Any], parts: list[ReadPart]) -> tuple[Any, dict[str, Any]]:
    """The one way an offline read (historical, export) leaves the platform, after ``check_offline_read`` let it
    start: each part's PII masked (or dropped) unless ``caller`` may see it, the provenance saying so, and one
    audit entry per feature set read. Returns (frame, provenance)."""
    masked: list[str] = []
    dropped: list[str] = []
    per_part = []
    for part in parts:
        frame, masking = mask_frame(frame, part.contract, caller,
                                    masking_key(settings, env, part.contract, caller), column_of=part.column_of)
        masked += masking["masked"]
        dropped += masking["dropped"]
        per_part.append(masking)
    provenance = {**provenance, "rows": len(frame), "caller": caller.describe(), "pii_masked": masked,
                  "pii_dropped": dropped}
    for part, masking in zip(parts, per_part, strict=True):
        plain = {column: feature for feature, column in (part.column_of or {}).items()}
        record_read(settings, env, part.contract, caller, action, {
            **provenance, "feature_set": part.contract.name, "build_id": part.build_id,
            "pii_masked": [plain.get(c, c) for c in masking["masked"]],
            "pii_dropped": [plain.get(c, c) for c in masking["dropped"]], "features_read": part.features})
    return frame, provenance


def record_read(settings: Settings, env: EnvironmentContract, contract: FeatureSetContract, caller: Caller,
                action: str, provenance: dict[str, Any] | None, denied: str | None = None) -> None:
    """Offline reads leave a trail too (who took which build's rows, PII masked or not, or who was refused):
    regulated teams must answer "who saw this personal data"."""
    from feature_platform import audit

    if denied is not None:
        change, classification, detail = "refused", "access denied", [denied]
    else:
        assert provenance is not None
        hidden = provenance["pii_masked"] + provenance["pii_dropped"]
        taken = provenance.get("features_read") or contract.pii_features  # a model's service may take a few
        shown = [f for f in contract.pii_features if f in taken and f not in hidden]
        change, classification = "read", ("PII unmasked" if shown else "PII masked" if hidden else "no PII")
        detail = [f"build {provenance['build_id']}, {provenance['rows']} rows",
                  *([f"PII unmasked: {', '.join(shown)}"] if shown else []),
                  *([f"PII masked or dropped: {', '.join(hidden)}"] if hidden else [])]
    audit.record(settings, env, action, [contract.name], [{
        "object": contract.feature_view_name, "kind": "offline read", "change": change,
        "classification": classification, "detail": detail, "feature_set": contract.name}],
        caller=caller.describe(), authenticated=caller.authenticated)


def _placeholder_source(contract: FeatureSetContract) -> Any:
    from feast import FileSource

    return FileSource(name=f"{contract.feature_view_name}_source", path="unused.parquet",
                      timestamp_field=contract.timestamp_field)
