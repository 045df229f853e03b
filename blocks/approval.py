"""The identity provider's approval-token keys as a Prefect block (Blocks page of the UI).

The ``remediate`` flow checks each approval token against these keys (policy 4,
``docs/policies/approval_workflow.md``); without a block it reads the
``NEURALOPS_APPROVAL_*`` settings.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from neuralops.approval import ASYMMETRIC_ALGORITHMS, ApprovalKeys


class ApprovalKeysBlock(Block):
    """Public keys of the identity provider that signs approval tokens, and what the tokens
    must carry. Give either a PEM public key or a JWKS URL."""

    _block_type_name = "NeuralOps Approval Keys"
    _block_type_slug = "neuralops-approval-keys"
    _description = (
        "Identity provider keys that approval tokens (JWT, org-admin role) must verify against."
    )

    public_key_pem: str | None = Field(
        None,
        title="Public key (PEM)",
        description="The IdP's signing public key or certificate: -----BEGIN PUBLIC KEY-----... "
        "(public: not a secret). Leave empty when a JWKS URL is given.",
    )
    jwks_url: str | None = Field(
        None,
        title="JWKS URL",
        description="e.g. https://idp.example.com/realms/ops/protocol/openid-connect/certs; "
        "keys are picked by the token's `kid` and cached for 5 minutes.",
    )
    issuer: str | None = Field(
        None, title="Issuer", description="Required `iss` claim; empty: not checked."
    )
    audience: str | None = Field(
        None, title="Audience", description="Required in the `aud` claim; empty: not checked."
    )
    roles_claim: str = Field(
        "roles",
        title="Roles claim",
        description="Claim (dotted path) listing the roles, e.g. `realm_access.roles` for "
        "Keycloak. It must contain `org-admin`.",
    )
    approver_claim: str = Field(
        "sub",
        title="Approver claim",
        description="Claim that must equal the approver id typed in the Resume form "
        "(`sub`, or e.g. `preferred_username`).",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "PS256", "ES256"],
        title="Algorithms",
        description="Allowed signing algorithms, asymmetric only: "
        f"{', '.join(ASYMMETRIC_ALGORITHMS)}.",
    )

    def keys(self) -> ApprovalKeys:
        """The keys to verify with; a bad field raises ConfigError naming it."""
        return ApprovalKeys.build(
            f"block {self._block_document_name or self._block_type_name!r}",
            public_key_pem=self.public_key_pem or None,
            jwks_url=self.jwks_url or None,
            issuer=self.issuer or None,
            audience=self.audience or None,
            roles_claim=self.roles_claim,
            approver_claim=self.approver_claim,
            algorithms=tuple(self.algorithms),
            label=f"block {self._block_document_name or self._block_type_name}",
        )
