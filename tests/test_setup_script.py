"""Tests of scripts/setup.sh that need neither root, nor network, nor changes to the machine.

The apt-source derivation runs on fake deb822 and classic source files in temporary folders
(through CIRCUITSIM_APT_DIR, CIRCUITSIM_APT_SOURCES_LIST and CIRCUITSIM_OS_RELEASE), and the
ngspice install path runs against stub ``ngspice``/``apt-get``/``ldconfig``/``dpkg-query``/``id``
programs on a PATH that holds nothing else but a few real core tools.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://mirror.example.test/debian"  # deliberately not a real Debian mirror

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n'
TRIXIE = 'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\nVERSION_CODENAME=trixie\n'
NOBLE = 'NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n'

DEBIAN_SOURCES = f"""\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://security.example.test/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}
"""


def expected_stanza(uris: str = MIRROR, signed_by: str | None = KEYRING) -> list[str]:
    lines = ["Types: deb", f"URIs: {uris}", "Suites: bookworm-backports", "Components: main"]
    if signed_by is not None:
        lines.append(f"Signed-By: {signed_by}")
    return lines


def fields(stdout: str) -> list[str]:
    """The stanza's lines without its comments."""
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


class AptTree:
    """A fake /etc with apt/sources.list, apt/sources.list.d/ and os-release."""

    def __init__(self, base: Path, os_release: str = BOOKWORM) -> None:
        self.apt = base / "etc" / "apt"
        self.dir = self.apt / "sources.list.d"
        self.dir.mkdir(parents=True)
        self.os_release = base / "etc" / "os-release"
        self.os_release.write_text(os_release)

    def add(self, name: str, text: str) -> Path:
        path = self.apt / name if name == "sources.list" else self.dir / name
        path.write_text(text)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CIRCUITSIM_APT_SOURCES_LIST", None)  # default: sources.list beside the dir
        env.update(CIRCUITSIM_APT_DIR=str(self.dir), CIRCUITSIM_OS_RELEASE=str(self.os_release))
        env.update(extra)
        return env

    def print_source(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BASH, str(SCRIPT), "--print-backports-source"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def tree(tmp_path: Path) -> AptTree:
    return AptTree(tmp_path)


def test_script_syntax() -> None:
    subprocess.run([BASH, "-n", str(SCRIPT)], check=True, timeout=30)


def test_script_is_executable() -> None:
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
    assert (ROOT / ".ci" / "run").stat().st_mode & stat.S_IXUSR


# ------------------------------------------------------------------ deb822 .sources files


def test_deb822_main_archive_uri_and_signed_by(tree: AptTree) -> None:
    tree.add("debian.sources", DEBIAN_SOURCES)
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza()
    assert "security" not in res.stdout.lower()


def test_deb822_security_stanza_first_is_ignored(tree: AptTree) -> None:
    first, second = DEBIAN_SOURCES.split("\n\n")
    tree.add("debian.sources", second + "\n" + first + "\n")
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza()


def test_deb822_skips_disabled_and_source_only_stanzas(tree: AptTree) -> None:
    tree.add(
        "a.sources",
        "Types: deb\nURIs: http://disabled.example.test/debian\nSuites: bookworm\n"
        "Components: main\nEnabled: no\n\n"
        "Types: deb-src\nURIs: http://src.example.test/debian\nSuites: bookworm\nComponents: main\n",
    )
    tree.add("debian.sources", DEBIAN_SOURCES)
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza()


def test_deb822_without_signed_by_and_several_uris(tree: AptTree) -> None:
    tree.add(
        "debian.sources",
        "Types: deb deb-src\nURIs: http://one.example.test/debian\n  http://two.example.test/debian\n"
        "Suites: bookworm\nComponents: main contrib\n",
    )
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    uris = "http://one.example.test/debian http://two.example.test/debian"
    assert fields(res.stdout) == expected_stanza(uris=uris, signed_by=None)


def test_deb822_embedded_signed_by_key_is_kept_verbatim(tree: AptTree) -> None:
    key = [
        " -----BEGIN PGP PUBLIC KEY BLOCK-----",
        " .",
        " mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD9K7UgrTrVjrXp2M1W",
        " -----END PGP PUBLIC KEY BLOCK-----",
    ]
    tree.add(
        "debian.sources",
        f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm\nComponents: main\nSigned-By:\n"
        + "\n".join(key)
        + "\n",
    )
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    got = fields(res.stdout)
    assert got[:4] == expected_stanza(signed_by=None)
    # the key block's lines start with a space, so fields() keeps them
    assert got[4:] == ["Signed-By:", *key]


# ------------------------------------------------------------------ classic lists


def test_classic_sources_list(tree: AptTree) -> None:
    tree.add(
        "sources.list",
        "# deb http://commented.example.test/debian bookworm main\n"
        "deb-src http://src.example.test/debian bookworm main\n"
        "deb http://security.example.test/debian-security bookworm-security main\n"
        f"deb {MIRROR} bookworm main contrib non-free-firmware  # the main archive\n"
        f"deb {MIRROR} bookworm-updates main\n",
    )
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza(signed_by=None)


def test_classic_list_with_options_keeps_signed_by(tree: AptTree) -> None:
    tree.add(
        "mirror.list",
        f"deb [ arch=amd64 signed-by=/etc/apt/keyrings/x.gpg ] {MIRROR} bookworm main\n",
    )
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza(signed_by="/etc/apt/keyrings/x.gpg")

    tree.add("mirror.list", f"deb [signed-by={KEYRING}] {MIRROR} bookworm main\n")
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza()


def test_files_other_than_list_and_sources_are_ignored(tree: AptTree) -> None:
    tree.add("other.sources.disabled", DEBIAN_SOURCES.replace(MIRROR, "http://no.example.test/x"))
    tree.add("old.list.save", "deb http://no.example.test/y bookworm main\n")
    tree.add("debian.sources", DEBIAN_SOURCES)
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza()


# ------------------------------------------------------------------ already enabled / not found


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bp.sources", f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm-backports\nComponents: main\n"),
        ("circuitsim-backports.sources", "\n".join(expected_stanza()) + "\n"),
        ("bp.list", f"deb {MIRROR} bookworm-backports main\n"),
        ("sources.list", f"deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-backports main\n"),
    ],
)
def test_backports_already_enabled(tree: AptTree, name: str, text: str) -> None:
    tree.add("debian.sources", DEBIAN_SOURCES)
    path = tree.add(name, text)
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert "already enabled" in res.stderr
    assert str(path) in res.stderr


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("bp.sources", f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm-backports\nComponents: main\nEnabled: no\n"),
        ("bp.list", f"# deb {MIRROR} bookworm-backports main\n"),
        ("bp.list", f"deb-src {MIRROR} bookworm-backports main\n"),
    ],
)
def test_disabled_backports_do_not_count(tree: AptTree, name: str, text: str) -> None:
    tree.add("debian.sources", DEBIAN_SOURCES)
    tree.add(name, text)
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert fields(res.stdout) == expected_stanza()


def test_no_main_archive_fails_clearly(tree: AptTree) -> None:
    first, second = DEBIAN_SOURCES.split("\n\n")
    tree.add("security.sources", second)
    res = tree.print_source()
    assert res.returncode != 0
    assert res.stdout == ""
    assert "main archive" in res.stderr


def test_no_source_files_at_all_fails_clearly(tree: AptTree) -> None:
    res = tree.print_source()
    assert res.returncode != 0
    assert "main archive" in res.stderr


@pytest.mark.parametrize("os_release", [TRIXIE, NOBLE])
def test_no_backports_needed_on_newer_releases(tmp_path: Path, os_release: str) -> None:
    tree = AptTree(tmp_path, os_release)
    tree.add("debian.sources", DEBIAN_SOURCES)
    res = tree.print_source()
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert "no backports needed" in res.stderr


# ------------------------------------------------------------------ the install path, on stubs

CORE_TOOLS = ["dirname", "awk", "grep", "head", "cut", "mktemp", "install", "rm", "env", "cat", "sed"]

NGSPICE_39 = "** ngspice-39.3 : Circuit level simulation program\n"
NGSPICE_46 = (
    "** ngspice-46 : Circuit level simulation program\n"
    "** Compiled with KLU Direct Linear Solver\n"
)


class Machine:
    """A PATH of stubs standing in for a Debian machine's ngspice, apt and ldconfig."""

    def __init__(self, base: Path, os_release: str = BOOKWORM, uid: int = 0) -> None:
        self.tree = AptTree(base, os_release)
        self.bin = base / "bin"
        self.state = base / "state"
        self.bin.mkdir()
        self.state.mkdir()
        for tool in CORE_TOOLS:
            real = shutil.which(tool)
            assert real, tool
            (self.bin / tool).symlink_to(real)
        self.stub("id", f'echo {uid}')
        self.stub("ngspice", f'cat "{self.state}/ngspice"')
        # A long cache with the library near the top, as on a real machine: a reader that
        # stops at the first match must not turn ldconfig's SIGPIPE into "not installed".
        self.stub(
            "ldconfig",
            f'[ -e "{self.state}/lib" ] && echo "\tlibngspice.so.0 (libc6,x86-64) => /x"\n'
            "printf '\\tlibother%s.so.1 (libc6,x86-64) => /y\\n' {1..5000}",
        )
        self.stub("dpkg-query", f'[ -e "{self.state}/lib" ] && echo "ii  $(cat "{self.state}/lib")"')
        # apt-get logs its calls; "install" brings what state/repo says the archive has.
        self.stub(
            "apt-get",
            f'echo "$DEBIAN_FRONTEND $*" >> "{self.state}/apt.log"\n'
            f'if [ "$1" = install ] && [ -e "{self.state}/repo" ]; then\n'
            f'  cat "{self.state}/repo" > "{self.state}/ngspice"; cat "{self.state}/repo-lib" > "{self.state}/lib"\n'
            "fi",
        )
        self.set_ngspice(NGSPICE_39, "39.3+ds-1")

    def stub(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f"#!{BASH}\n{body}\n")
        path.chmod(0o755)

    def set_ngspice(self, banner: str, lib: str | None) -> None:
        (self.state / "ngspice").write_text(banner)
        if lib is None:
            (self.state / "lib").unlink(missing_ok=True)
        else:
            (self.state / "lib").write_text(lib)

    def archive_has(self, banner: str, lib: str) -> None:
        (self.state / "repo").write_text(banner)
        (self.state / "repo-lib").write_text(lib)

    def apt_log(self) -> list[str]:
        log = self.state / "apt.log"
        return log.read_text().splitlines() if log.exists() else []

    def run(self) -> subprocess.CompletedProcess[str]:
        env = self.tree.env(PATH=str(self.bin), TMPDIR=str(self.state))
        env.pop("DEBIAN_FRONTEND", None)
        return subprocess.run(
            [BASH, str(SCRIPT), "--ngspice-only"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def test_fresh_bookworm_enables_backports_and_installs(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.tree.add("debian.sources", DEBIAN_SOURCES)
    m.archive_has(NGSPICE_46, "46+ds-1~bpo12+1")
    res = m.run()
    assert res.returncode == 0, res.stderr
    written = m.tree.dir / "circuitsim-backports.sources"
    assert fields(written.read_text()) == expected_stanza()
    assert m.apt_log() == [
        "noninteractive update",
        "noninteractive install -y -t bookworm-backports ngspice libngspice0",
    ]
    # A second run finds everything in place: no apt, file untouched.
    before = written.stat().st_mtime_ns
    res = m.run()
    assert res.returncode == 0, res.stderr
    assert "ngspice 46 with KLU" in res.stderr
    assert len(m.apt_log()) == 2
    assert written.stat().st_mtime_ns == before


def test_bookworm_with_backports_enabled_writes_nothing(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.tree.add("debian.sources", DEBIAN_SOURCES)
    m.tree.add("bp.list", f"deb {MIRROR} bookworm-backports main\n")
    m.archive_has(NGSPICE_46, "46+ds-1~bpo12+1")
    res = m.run()
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in m.tree.dir.iterdir()) == ["bp.list", "debian.sources"]
    assert m.apt_log()[-1] == "noninteractive install -y -t bookworm-backports ngspice libngspice0"


def test_old_library_beside_new_program_is_reinstalled(tmp_path: Path) -> None:
    m = Machine(tmp_path)
    m.tree.add("debian.sources", DEBIAN_SOURCES)
    m.set_ngspice(NGSPICE_46, "39.3+ds-1")
    m.archive_has(NGSPICE_46, "46+ds-1~bpo12+1")
    res = m.run()
    assert res.returncode == 0, res.stderr
    assert "libngspice0 39 is too old" in res.stderr
    assert len(m.apt_log()) == 2


def test_newer_release_installs_from_its_own_archive(tmp_path: Path) -> None:
    m = Machine(tmp_path, TRIXIE)
    m.tree.add("debian.sources", DEBIAN_SOURCES.replace("bookworm", "trixie"))
    m.archive_has(NGSPICE_46, "46+ds-1")
    res = m.run()
    assert res.returncode == 0, res.stderr
    assert m.apt_log() == ["noninteractive update", "noninteractive install -y ngspice libngspice0"]
    assert not (m.tree.dir / "circuitsim-backports.sources").exists()


def test_still_too_old_after_install_fails_loudly(tmp_path: Path) -> None:
    m = Machine(tmp_path, NOBLE.replace("24.04", "22.04").replace("noble", "jammy"))
    m.archive_has(NGSPICE_39, "36+ds-1")
    res = m.run()
    assert res.returncode != 0
    assert "ERROR" in res.stderr and "still" in res.stderr


def test_nothing_to_do_when_ngspice_is_fine(tmp_path: Path) -> None:
    m = Machine(tmp_path, uid=1000)
    m.set_ngspice(NGSPICE_46, "46+ds-1~bpo12+1")
    res = m.run()
    assert res.returncode == 0, res.stderr
    assert m.apt_log() == []


def test_not_root_without_sudo_names_the_packages(tmp_path: Path) -> None:
    m = Machine(tmp_path, uid=1000)
    m.tree.add("debian.sources", DEBIAN_SOURCES)
    res = m.run()
    assert res.returncode != 0
    assert "ngspice libngspice0" in res.stderr and "sudo" in res.stderr
    assert m.apt_log() == []


# ------------------------------------------------------------------ Makefile


@pytest.mark.parametrize("script, runs", [
    ("scripts/test.sh", ".venv/bin/python\" -m pytest"),
    ("scripts/demo.sh", ".venv/bin/circuitsim\" demo"),
])
def test_readme_commands_set_up_first_then_run(script: str, runs: str) -> None:
    path = ROOT / script
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    assert os.access(path, os.X_OK)
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    setup = next(k for k, ln in enumerate(lines) if "scripts/setup.sh" in ln)
    run = next(k for k, ln in enumerate(lines) if runs in ln)
    assert setup < run


def test_makefile_and_ci_delegate_to_the_readme_commands() -> None:
    make = (ROOT / "Makefile").read_text()
    assert "\tbash scripts/test.sh $(PYTEST_ARGS)" in make
    assert "\tbash scripts/demo.sh" in make
    assert "exec bash scripts/test.sh" in (ROOT / ".ci/run").read_text()
