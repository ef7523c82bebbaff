"""FastAPI dependencies as `Annotated` aliases: routes declare what they need, tests override the providers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.app.core.config import Settings

if TYPE_CHECKING:
    from service.app.main import Services


def get_services(request: Request) -> Services:
    """The container the lifespan built for this app (registry, vectors, embedder, ingest, search...)."""
    return request.app.state.services


def get_settings_dep(request: Request) -> Settings:
    """The settings this app was created with (not necessarily the process-wide ones)."""
    return request.app.state.services.settings


ServicesDep = Annotated["Services", Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_tenant(settings: SettingsDep) -> str:
    """The caller's tenant; without authentication everything belongs to DEFAULT_TENANT."""
    return settings.default_tenant


TenantDep = Annotated[str, Depends(get_tenant)]
