"""Entra ID, as far as a confidential client needs it: OIDC discovery (what MSAL reads
first) and the token endpoint's client-credentials grant, with a client secret, a
certificate-signed client assertion (RS256/x5t or PS256/x5t#S256) or a federated token.

    GET  /{tenant}/v2.0/.well-known/openid-configuration     OIDC discovery
    GET  /{tenant}/.well-known/openid-configuration          the v1 spelling, same document
    POST /{tenant}/oauth2/v2.0/token                         client credentials

`{tenant}` is any tenant the app is consented in (`EmulatorState.tenant`, any case); a
token remembers its tenant, so Graph serves that tenant's data.

Errors are Entra's: AADSTS codes in the JSON body, as MSAL expects them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import secrets
import time

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from archiver.emulator.responses import aad_error, base_url
from archiver.emulator.state import EmulatorState

_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def discovery(state: EmulatorState, request: web.Request, tenant: str) -> web.Response:
    """The tenant's OpenID configuration, its endpoints on the host the request came to."""
    if state.tenant(tenant) is None:
        return aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
    base = f"{base_url(request)}/{tenant}"
    document = {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/v2.0",
        "request_uri_parameter_supported": False,
        "userinfo_endpoint": f"{base}/openid/userinfo",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }
    return web.json_response(document)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_assertion(
    state: EmulatorState, assertion: str, audience: str, client_id: str
) -> tuple[int, str] | None:
    """None when `assertion` is a valid client assertion for `client_id`; else (AADSTS, why)."""
    if assertion in state.config.federated_tokens:
        return None
    try:
        head_text, claims_text, signature_text = assertion.split(".")
        header = json.loads(_b64url(head_text))
        claims = json.loads(_b64url(claims_text))
        signature = _b64url(signature_text)
    except (ValueError, binascii.Error):
        if state.config.federated_tokens:
            return 700213, "No matching federated identity record found for presented assertion."
        return 50027, "JWT token is invalid or malformed."
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return 50027, "JWT token is invalid or malformed."
    algorithm = header.get("alg")
    if algorithm not in ("RS256", "PS256"):
        return 5002738, f"Invalid JWT token. '{algorithm}' is not a supported signature algorithm."
    candidates = state.certificates()
    with contextlib.suppress(ValueError, binascii.Error, TypeError):
        if "x5t#S256" in header:
            wanted = _b64url(header["x5t#S256"])
            candidates = [c for c in candidates if c.fingerprint(hashes.SHA256()) == wanted]
        elif "x5t" in header:
            wanted = _b64url(header["x5t"])
            sha1 = hashes.SHA1()  # noqa: S303 - RFC 7515 defines x5t as the SHA-1 thumbprint
            candidates = [c for c in candidates if c.fingerprint(sha1) == wanted]
    signed = f"{head_text}.{claims_text}".encode()
    scheme: padding.AsymmetricPadding = (
        padding.PKCS1v15()
        if algorithm == "RS256"
        else padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    )
    for certificate in candidates:
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(signature, signed, scheme, hashes.SHA256())
        except InvalidSignature:
            continue
        break
    else:
        return 700027, "Client assertion failed signature validation."
    now = time.time()
    audiences = claims.get("aud")
    if audience not in (audiences if isinstance(audiences, list) else [audiences]):
        return 700212, f"Invalid audience '{audiences}'; expected '{audience}'."
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return 700021, "Client assertion application identifier doesn't match 'client_id'."
    expiry = claims.get("exp")
    if not isinstance(expiry, int | float) or expiry <= now:
        return 700024, "Client assertion is not within its valid time range."
    not_before = claims.get("nbf")
    if isinstance(not_before, int | float) and not_before > now + 300:
        return 700024, "Client assertion is not within its valid time range."
    return None


async def token(state: EmulatorState, request: web.Request, tenant: str) -> web.Response:
    """The client-credentials grant: an access token, or Entra's error for the request."""
    config = state.config
    form = await request.post()

    def text(name: str) -> str:
        value = form.get(name)
        return value if isinstance(value, str) else ""

    if config.token_outages > 0:
        config.token_outages -= 1
        outage = aad_error(
            503, "temporarily_unavailable", 50000, "The service is temporarily unavailable."
        )
        outage.headers["Retry-After"] = "1"  # MSAL replays a 5xx for this long (default 5 s)
        return outage
    known = state.tenant(tenant)
    if known is None:
        return aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
    app_id, app_secret = state.client(known)
    if text("grant_type") != "client_credentials":
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{text('grant_type')}'.",
        )
    client_id = text("client_id")
    if client_id != app_id:
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
        )
    secret, assertion = text("client_secret"), text("client_assertion")
    if secret:
        if not secrets.compare_digest(secret.encode(), app_secret.encode()):
            return aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
    elif assertion:
        if text("client_assertion_type") != _JWT_BEARER:
            return aad_error(
                400,
                "invalid_request",
                50027,
                f"client_assertion_type must be '{_JWT_BEARER}'.",
            )
        audience = f"{base_url(request)}/{tenant}/oauth2/v2.0/token"
        problem = check_assertion(state, assertion, audience, client_id)
        if problem is not None:
            return aad_error(401, "invalid_client", *problem)
    else:
        return aad_error(
            401,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the "
            "'client_credentials' grant type.",
        )
    scopes = text("scope").split()
    resources = [s for s in scopes if s not in ("openid", "profile", "offline_access")]
    if len(resources) != 1 or not resources[0].endswith("/.default"):
        return aad_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {text('scope')} is not valid. Client credential "
            "flows must have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    lifetime = config.token_lifetime
    return web.json_response(
        {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": state.issue_token(known),
        }
    )
