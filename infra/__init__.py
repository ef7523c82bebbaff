"""The Pulumi program of the RAG platform, as an importable package.

`infra/__main__.py` is what `pulumi up` runs (`main: infra/` in Pulumi.yaml); `infra.offline.run_stack` runs the
same program under mocks. Config: `infra.config`; cluster targets: `infra.clusters`; config -> components:
`infra.stack`; building blocks: `infra.components`; policies: `infra.policy`; workflows (Automation API,
`ragops`): `infra.workflows`.
"""
