"""No error mlbuild prints carries a URL's credentials, whichever module raised it."""

from __future__ import annotations

import pytest
from mlbuild._errors import ConfigError, FetchError, MlbuildError
from mlbuild._spec import load_spec

TOKEN = "ghp_s3cr3tTOKENvalue"


@pytest.mark.parametrize("cls", [MlbuildError, ConfigError, FetchError])
def test_every_error_masks_url_credentials(cls):
    exc = cls(
        f"could not fetch https://user:{TOKEN}@pkgs.example/simple/x",
        hint=f"try https://{TOKEN}@pkgs.example/",
        details=f"uv: error: GET https://__token__:{TOKEN}@pkgs.example/x.whl -> 401",
    )
    rendered = exc.render()
    assert TOKEN not in rendered and TOKEN not in str(exc)
    assert rendered.count("https://****@pkgs.example/") == 3


def test_invalid_requirement_with_a_token_is_reported_masked(tmp_path):
    (tmp_path / "predict.py").write_text("def predict(x):\n    return x\n")
    # not a valid requirement (a space in the name), and it carries a token in its URL
    (tmp_path / "requirements.txt").write_text(f"bad name @ https://user:{TOKEN}@pkgs.example/x.whl\n")
    with pytest.raises(ConfigError) as info:
        load_spec(tmp_path)
    assert TOKEN not in info.value.render()
