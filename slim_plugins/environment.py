"""What ``slim-plugins list`` checks in the installation: the start-up hook, and per adapter the
suite version found, whether it is supported and whether a fresh interpreter patches it."""
import json
import os
import site
import subprocess
import sys

from slim_plugins import _boot

HOOK_FILE = "slim_plugins.pth"
# The one line of the hook; setup.py installs the repository's slim_plugins.pth, a test keeps
# the two equal.
HOOK_LINE = "import slim_plugins._boot as b; b.boot()"
REINSTALL = ("reinstall slim-plugins: `pip install -e .` in a checkout, "
             "else `pip install --force-reinstall --no-deps slim-plugins`")


def site_dirs():
    """The directories whose ``.pth`` files this interpreter runs at start-up."""
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(os.path.realpath(d) for d in dirs))


def hook_status(environ=None):
    """``(ok, line)``: is the start-up hook installed, current and active in this interpreter?"""
    environ = os.environ if environ is None else environ
    found = [os.path.join(d, HOOK_FILE) for d in site_dirs() if os.path.isfile(os.path.join(d, HOOK_FILE))]
    if not found:
        return False, (f"missing: no {HOOK_FILE} in {', '.join(site_dirs())}, so a train command refuses "
                       f"--plugin as an unrecognized argument; fix: {REINSTALL}")
    path = found[0]
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if lines != [HOOK_LINE]:
        return False, f"stale: {path} holds {' / '.join(lines)!r}, this version needs {HOOK_LINE!r}; fix: {REINSTALL}"
    if _boot._truthy(environ.get(_boot.ENV_DISABLE, "")):  # on purpose: not an installation fault
        return True, f"disabled: {path} is installed, {_boot.ENV_DISABLE}=1 switches it off"
    if not _boot._booted:
        return False, f"inactive: {path} is installed but did not run in this interpreter (python -S?)"
    return True, f"ok ({path})"


def suite_of(adapter):
    """``(distribution, version)`` of the suite an adapter drives, or None if not installed."""
    from importlib import metadata

    for dist in getattr(adapter, "distributions", ()):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def supported(adapter, version):
    """True/False by the adapter's tested version prefixes; None if it declares none."""
    prefixes = getattr(adapter, "supported", ())
    if not prefixes:
        return None
    return any(version == p.rstrip(".") or version.startswith(p) for p in prefixes)


def probe_patches(timeout=120):
    """``{adapter: {"targets": ..., "without": ..., "with": ...}}`` from a fresh interpreter of
    this environment that imports each installed suite as a train command would: whether the
    adapter's patch targets are there, what is patched with no plugin enabled (the loads only),
    and with one (everything); or ``{adapter: "import failed: ..."}``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLIM_PLUGINS")}
    try:
        proc = subprocess.run([sys.executable, "-c", "from slim_plugins.environment import _probe; _probe()"],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def _probe():
    """Child side of :func:`probe_patches`: prints its JSON answer as the last line."""
    import warnings

    warnings.simplefilter("ignore")
    from slim_plugins.errors import exception_line
    from slim_plugins.session import get_session

    result = {}
    session = get_session()
    states = {None: "not checked", "none": "nothing", "loading": "loads, config", "all": "installed"}
    for name, adapter in session.adapters.items():
        if suite_of(adapter) is None and getattr(adapter, "distributions", ()):
            continue
        if not hasattr(adapter, "patched"):  # an adapter that does not subclass Adapter
            continue
        try:
            adapter.import_suite()
        except Exception as exc:
            result[name] = "import failed: " + exception_line(exc)
            continue
        entry = {"targets": "ok", "without": None, "with": None}
        try:
            adapter.verify() if hasattr(adapter, "verify") else None
        except Exception as exc:
            entry["targets"] = str(exc).split("] ", 1)[-1].split("; hint:")[0]
        if hasattr(adapter, "patch_state"):
            entry["without"] = states[adapter.patch_state()]
        result[name] = entry
    session.adapters_active = True  # what enabling a plugin does
    for name, entry in result.items():
        if isinstance(entry, dict):
            adapter = session.adapters[name]
            try:
                adapter.activate(session) if hasattr(adapter, "activate") else None
            except Exception:
                pass  # an unsupported suite: the targets column says why
            patched = adapter.patch_state() if hasattr(adapter, "patch_state") else (
                {True: "all", False: "none"}.get(adapter.patched()))
            entry["with"] = states[patched]
    sys.stdout.flush()
    print("\n" + json.dumps(result))
