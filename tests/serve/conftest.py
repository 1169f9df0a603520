"""What the serve tests share: the app of the module's `served` model, running on 127.0.0.1 for the module.

A module sets APP_OPTIONS (keyword arguments of create_app, e.g. body caps) when it needs other than the defaults."""

import pytest


@pytest.fixture(scope="module")
def server(request, served):
    from diabetica_jax.serve.app import create_app
    from diabetica_jax.serve.server import BackgroundServer

    with BackgroundServer(create_app(served, **getattr(request.module, "APP_OPTIONS", {}))) as running:
        yield running
