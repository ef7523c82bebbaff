"""What the offline mocks answer for a managed service, held to what its provider returns (REVIEW11).

The mocks stand in for the providers (infra/offline.py `PlatformMocks`); an answer a provider never gives, or one
that leaves out what it does give, lets a test pass that a real `up` would not (REVIEW10 F0: a read answered the way
the program assumed). Each test here pins one answer to the provider's behaviour and checks the program uses it.
"""

from __future__ import annotations

import re

import pytest

from tests.infra.conftest import run

MEMORYSTORE = "gcp:redis/instance:Instance"


def test_memorystore_with_auth_puts_its_auth_string_in_the_redis_url() -> None:
    """terraform-provider-google's redis instance returns `auth_string` only with `auth_enabled` (the program turns
    AUTH on): the service's REDIS_URL must carry it, or every connection is refused with NOAUTH. The mock answered
    no auth string, so a REDIS_URL without the password passed offline."""
    result = run("prod", "gke")  # redis.mode managed: Memorystore on GKE
    [instance] = result.of_type(MEMORYSTORE)
    assert instance.inputs["authEnabled"] is True
    [secret] = [
        r
        for r in result.of_type("kubernetes:core/v1:Secret")
        if "REDIS_URL" in (r.inputs.get("stringData") or {})
    ]
    url = secret.inputs["stringData"]["REDIS_URL"]
    assert re.fullmatch(r"redis://:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}@10\.30\.0\.4:6379/0", url), url
    assert "stringData" in secret.secret_keys


def _modelled_invokes() -> set[str]:
    """The provider invoke tokens `PlatformMocks.call` answers (the engine's builtin `pulumi:pulumi:` ones aside)."""
    import inspect

    from infra.offline import PlatformMocks

    source = inspect.getsource(PlatformMocks.call)
    return {
        t
        for t in re.findall(r'"([a-z0-9-]+:[A-Za-z0-9/]+:[A-Za-z0-9]+)"', source)
        if not t.startswith("pulumi:")
    }


def test_the_mocks_answer_only_invokes_the_program_makes() -> None:
    """An answer for a call the program no longer makes is dead weight that looks like coverage (note20: getPartition,
    getRegion, getPolicyDocument and gcp getProject were answered, never called). Each modelled token's SDK function
    (`aws:eks/getNodeGroup:getNodeGroup` -> `aws.eks.get_node_group[_output]`) must be called in infra/."""
    from infra.offline import PROJECT_DIR

    program = "\n".join(
        path.read_text(encoding="utf-8")
        for path in (PROJECT_DIR / "infra").rglob("*.py")
        if path.name != "offline.py"
    )
    modelled = _modelled_invokes()
    assert len(modelled) >= 10
    for token in sorted(modelled):
        package, module, function = token.split(":")
        module = module.split("/")[0]
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", function).lower()
        prefix = rf"{package}\." if module == "index" else rf"{package}\.{module}\."
        assert re.search(rf"{prefix}{snake}(_output)?\(", program), (
            f"{token}: answered by the mocks, never called"
        )


def test_an_invoke_the_mocks_do_not_model_fails_the_run_naming_it() -> None:
    """The mocks answered any other invoke with an empty result, so a program that started to call one would read
    nothing and pass whatever it did with it; now the call fails, naming the token, and records it (the program can
    catch the exception: test_an_unmodelled_invoke_the_program_catches_still_fails_the_run)."""
    import pytest
    from pulumi.runtime.mocks import MockCallArgs

    from infra.offline import PlatformMocks

    mocks = PlatformMocks()
    for token in ("aws:index/getRegion:getRegion", "gcp:organizations/getProject:getProject"):
        with pytest.raises(RuntimeError, match=f"do not model the invoke {token}"):
            mocks.call(MockCallArgs(token=token, args={}, provider=""))
    assert mocks.unmodelled == ["aws:index/getRegion:getRegion", "gcp:organizations/getProject:getProject"]
    # The modelled ones still answer with the provider's shape.
    identity, _ = mocks.call(
        MockCallArgs(token="aws:index/getCallerIdentity:getCallerIdentity", args={}, provider="")
    )
    assert set(identity) == {"accountId", "arn", "userId"}


def test_an_unmodelled_invoke_the_program_catches_still_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """REVIEW_INFRA21 L1: the mocks' exception reaches the program's `await`, and the program wraps some invokes in a
    broad `except Exception` (infra/guards.py `read_state` warns and deploys, or refuses a namespaceMode it cannot
    check): the run fails naming the token anyway, not with the program's fallback or its own error. (pulumi's SDK
    also re-raises the caught RPC error at the end of the run, rpc_manager.py; `run_stack` does not rely on it.)"""
    from infra import guards
    from infra.offline import UnmodelledInvoke, run_stack

    token = "pulumi:pulumi:readStackOutputsUnmodelled"
    monkeypatch.setattr(guards, "READ_STACK_OUTPUTS", token)
    for stack, overrides in (("staging", {}), ("dev", {"namespaceMode": "existing"})):
        with pytest.raises(UnmodelledInvoke, match=f"do not model the invoke {token}") as caught:
            run_stack(stack, config_overrides=overrides)
        assert caught.value.tokens == (token,)
