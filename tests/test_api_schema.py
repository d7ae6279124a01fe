"""The OpenAPI document is the contract: schemathesis, in process, with its default checks
(positive and negative data, status codes, content types, response schemas, auth), finds
nothing on any endpoint."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from recsys.api import create_app
from recsys.settings import Settings


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backend):
    """The app with keys required, a catalogue and a registered index, its lifespan up."""
    from ranking.engine import Ranker
    from recsys.auth import create_api_key
    from recsys.db.engine import make_engine
    from recsys.db.migrate import ensure_schema
    from tests.fixtures.catalogue import seed_catalogue

    tmp = tmp_path_factory.mktemp("schema")
    url = f"sqlite:///{tmp / 'recsys.db'}"
    ensure_schema(url)
    engine = make_engine(url)
    seed_catalogue(engine, tmp)
    key = create_api_key("fuzz", ["rank", "admin"], engine=engine)
    ranker = Ranker(tiny_backend, batch_size=4, reason_max_new_tokens=12)
    settings = Settings(embeddings="hashing", require_api_key=True, reload_poll_s=0,
                        batch_wait_ms=1.0)  # fmt: skip
    app = create_app(ranker=ranker, engine=engine, version="v1", settings=settings)
    client = asgi.get_client(app)
    client.__enter__()
    yield app, client, {"Authorization": f"Bearer {key}"}
    client.__exit__(None, None, None)
    engine.dispose()


def operations(app) -> list:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_honours_its_openapi_contract(served, mode):
    app, client, headers = served
    ops = operations(app)
    assert {op.path for op in ops} >= {"/v1/rank", "/v1/recommend", "/v1/events"}
    if mode == GenerationMode.NEGATIVE:  # only a body can be made invalid here
        ops = [op for op in ops if op.body]
    cases = []
    for op in ops:
        strategy = op.as_strategy(generation_mode=mode)

        @given(case=strategy)
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=True)  # fmt: skip
        def check(case) -> None:
            cases.append(case.path)
            case.call_and_validate(session=client, headers=headers)

        check()
    print(f"schemathesis {mode}: {len(cases)} cases over {len(ops)} operations")
    assert len(cases) >= 10 * len(ops)  # it really ran
