"""Sharing from the app: the Train tab's "Push to the Hub", pushed models in the model lists,
and the public allow-list with revisions.

The apps run as subprocesses (``python app.py``) and are called over raw HTTP; the Hub is
tests/hubserver.py, reached by huggingface_hub's real client in the app (HF_ENDPOINT).
"""

from __future__ import annotations

import pytest

from bedgen.errors import BedgenError
from bedgen.ui.security import ModelPolicy


def test_allow_list_entries_name_the_revisions_they_allow(tmp_path):
    """An entry without a revision allows the default branch; one with a revision allows that
    revision (a pattern allows several). Never every revision of a listed repo: anyone may
    open a pull request on a public repo, and it loads as ``@refs/pr/N`` or by commit hash."""
    policy = ModelPolicy(tmp_path, public=True, hub_allow=("org/m@branch", "org/plain", "team/*", "org/any@*"))
    for ref in ["org/m@branch", "org/plain", "org/plain@main", "team/x", "team/y@main", "org/any",
                "org/any@v3", "org/any@refs/pr/2"]:
        assert policy.check(ref) == ref
    for ref in ["org/m", "org/m@other", "org/mx@branch", "org/plain@refs/pr/1", "org/plain@" + "a" * 40,
                "org/plain@v2", "team/x@dev"]:
        with pytest.raises(BedgenError, match=f"'{ref}' is not served by this app"):
            policy.check(ref)
    local = ModelPolicy(tmp_path, public=False, hub_allow=("org/m@branch",))  # the list binds public apps only
    assert local.check("org/m@other") == "org/m@other"

