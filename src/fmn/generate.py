"""A realistic, Fedora-scale preferences generator for benchmarks and load tests.

:func:`generate_preferences` builds a :class:`~fmn.prefs.Preferences` with
``users`` users from ``seed`` alone: the same arguments give the same value on
the same Python version (nothing here iterates over a set or depends on the
hash seed).  The artifact universe does not depend on either argument: about
25,000 rpms plus a few hundred to a couple thousand containers, modules and
flatpaks, which always include every artifact named in the shared Fedora
messages (``data/fedora_names.json``), with synthetic but plausible names for
the rest.  Owners (users and groups) are drawn from the generated users; group
members too.  Users are Fedora-like account names, the message usernames and
agents first; each has a few destinations (some unverified, some with a
digest) and a long-tailed number of rules of every tracking kind, most users
keeping the two default rules "My packages" and "My events".  Which artifacts
and people are followed is Zipf-like, so a few packages (kernel, glibc,
python3, ...) have thousands of followers at 100,000 users and most artifacts
a handful; the message packages take random ranks, like any package a bus
message is about.  ``dump_document`` of
the result always passes ``parse_document``.
"""

from __future__ import annotations

import functools
import gc
import json
import random
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from itertools import accumulate
from typing import Any, Generic, TypeVar

from fmn.message import ARTIFACT_TYPES
from fmn.prefs import (
    Artifact,
    Destination,
    Digest,
    Filters,
    GenerationRule,
    Owners,
    Preferences,
    Rule,
    Tracking,
    User,
)

__all__ = ["UNIVERSE_SIZES", "FedoraNames", "fedora_names", "generate_preferences"]

#: How many artifacts of each type exist, whatever the user count (Fedora has
#: about 23,000 source rpms; containers, modules and flatpaks are far fewer).
UNIVERSE_SIZES: dict[str, int] = {
    "rpms": 25_000,
    "containers": 700,
    "modules": 350,
    "flatpaks": 1_400,
}

# The universe is the same for every seed so that benchmark runs with
# different seeds stay comparable artifact by artifact.
_UNIVERSE_SEED = 20_160_101
# Share of follows that go to the head (famous and message artifacts).
_HEAD_SHARE = 0.4
# Which artifact type one follow is (rpms dominate, as on the bus).
_FOLLOW_TYPE_SHARE: dict[str, float] = {
    "rpms": 0.85, "containers": 0.05, "modules": 0.03, "flatpaks": 0.07,
}


def _words(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(text.split()))


# --------------------------------------------------------------------------
# curated vocabulary (hand-written, Fedora-flavoured)

# Popularity head: the packages most people follow, most popular first.
_FAMOUS_RPMS = _words("""
    kernel glibc python3 systemd firefox gcc bash coreutils rpm dnf openssl
    gnome-shell mesa llvm NetworkManager selinux-policy podman vim-enhanced
    emacs git thunderbird libreoffice gtk4 gtk3 qt6-qtbase plasma-workspace
    pipewire grub2 openssh curl sudo util-linux binutils gdb golang rust
    nodejs java-21-openjdk perl ruby php httpd nginx postgresql mariadb
    chromium moby-engine kubernetes ansible cockpit anaconda dracut
    xorg-x11-server-Xwayland wayland mutter gimp inkscape ffmpeg-free
    gstreamer1 cups samba bind dnsmasq firewalld sssd freeipa 389-ds-base
    qemu libvirt virt-manager flatpak toolbox fedora-release fedora-repos
    lorax koji bodhi-server pagure mock fedpkg rpmlint zlib xz bzip2 sqlite
    libxml2 expat gnutls nss krb5 pam shadow-utils tzdata linux-firmware
    alsa-lib pulseaudio pcre2 boost cmake meson ninja-build autoconf automake
    make glib2 dbus-broker polkit udisks2 upower bluez wpa_supplicant texlive
    R octave julia ghc ocaml erlang elixir lua tcl zsh fish tmux htop strace
    valgrind perf gnome-software kf6-kio plasma-desktop xfce4-session
    gnome-terminal nautilus evolution rhythmbox totem blender krita kdenlive
    libdnf createrepo_c fedora-packager pungi osbuild rpm-ostree ostree
    bootc dnf5 anaconda-webui crun containers-common buildah skopeo
""")

_FAMOUS_CONTAINERS = _words("""
    fedora fedora-minimal fedora-toolbox fedora-bootc httpd nginx postgresql
    mariadb mysql redis memcached python3 nodejs golang ruby php perl
    cockpit etcd flannel kubernetes-master kubernetes-node origin registry
    rabbitmq mongodb varnish haproxy tools s2i-base s2i-core sssd
    freeipa-server mirrormanager2 koji bodhi waiverdb greenwave
""")

_FAMOUS_MODULES = _words("""
    nodejs postgresql perl ruby php python36 python27 django maven mysql
    mariadb redis httpd nginx 389-ds avocado eclipse gimp ant dwm libuv
    stratis swig scala subversion mongodb rust-toolset go-toolset
    llvm-toolset container-tools virt javapackages-tools
""")

_FAMOUS_FLATPAKS = _words("""
    firefox thunderbird libreoffice gimp inkscape eog evince gnome-calculator
    gnome-clocks gnome-maps gnome-weather gnome-builder gedit epiphany
    rhythmbox totem kdenlive krita okular gnome-boxes quadrapassel darktable
    blender audacity celluloid shotwell transmission-gtk polari baobab
    file-roller gnome-text-editor loupe
""")

# Lower-case software words: the stems of synthetic names.
_STEMS = _words("""
    abi acl agent aio alembic amqp anchor angular ansi apex arch argon arrow
    ascii asn1 async atom attr audio augeas auth avahi avro awk axis babel
    backoff bacon badger banner base64 bash bcrypt beacon bench bezier bidi
    binder bitset blake blob bloom bolt boto brotli bson btree bucket buffer
    bugzilla builder bus bytes cache cairo calendar canvas capnp carbon
    cargo cask cbor cell chardet chart checker chrono cipher clap clay click
    client clipboard cloud cluster codec color colorama comet compat config
    console cookie coral core cpio crate crc cron crypto csv ctypes cube
    curl cursor daemon dash data date dbus debug decimal deflate delta
    derive diff digest dirs disk dispatch django dns docker docopt dom
    dotenv draw dummy dwarf editor elf email emoji encoding engine enum
    epoll errno event expat exporter fabric faker fastcgi feed fetch fiber
    file filter finder flag flake flask float flow font format fractal
    frame fuse futures fuzzy gamma gear geo getopt gevent gif glob gpio
    graph grpc guard gzip hamcrest handler hash heap hex hiredis hook html
    http hyper icon idna image imap index inflect ini inotify input intl
    iter jinja joblib json jwt kafka kerberos keyring kiwi lark lazy ldap
    lexer libc linker lint lock log lru lzma macro mail make mako map
    markdown marshal matrix maven memo merge mime minify mio mmap mock
    model mqtt msgpack multipart mutex nano net nginx nom ntp num oauth
    object odbc onig opener orm packet pager panel param parser paste patch
    path pcap pdf peg pexpect pickle pipe pixel plugin png poll pool port
    posix pprint print proc progress promise proto proxy pty pulse pwd pyro
    query queue quote radix rand range raster rayon read redis regex remote
    render repo request resolver retry ring rope route rpc rsa rtree rules
    runner rustls sax scanner schema scroll secret semver serde serial
    server session setup sha shell signal simd sink slab slug smtp snap
    socket sort sound span sphinx spin split sql ssh stack stat stream
    string struct style svg sync syntax tabular tar task tempfile term test
    text thread tick tiff time timer tls toml token tokio tool trace tree
    trie tuple type tz udev ui unicode unidecode units unix url usb utf8
    uuid vector version vim walk watch wave web widget wire worker wrap x11
    xattr xml yaml zip zlib zmq zstd
""")

# CamelCase words for perl and Haskell names.
_CAMEL = _words("""
    Test Data Moose Class File Net HTTP IO Text Module Mojo Catalyst DBIx
    Digest Crypt Log Config Getopt Params List Hash Util Time Date Encode
    JSON XML YAML Term Sub Type Tiny Role Object Path Spec More Simple
    Exception Fatal Deep Warn Dumper Parser Server Client Request Response
    Template Email Mail Socket Async Lite Base Any Plugin Types Tools Temp
    Unicode String Number Compare Memory Stream Queue Cache Store Graph
    Image Math Random Sort Pod Tree Devel Dist Zilla Starter Mechanize
    Lens Aeson Conduit Network Parsec Vector Text Map Monad Trans Lift
""")

# GitHub owners for golang-github-OWNER-REPO names.
_GO_OWNERS = _words("""
    spf13 stretchr hashicorp google Masterminds pkg golang kubernetes
    containers coreos prometheus sirupsen mattn gorilla urfave fsnotify
    davecgh pmezard gogo godbus opencontainers docker moby cespare
    klauspost pelletier BurntSushi mitchellh onsi fatih gobwas jmespath
    aws etcd-io uber-go rs miekg vishvananda grpc-ecosystem emicklei
    go-openapi go-logr julienschmidt labstack gin-gonic valyala tidwall
    SAP minio cilium cncf dustin armon beorn7 benbjohnson blang
""")

_ECOSYSTEM_PREFIXES = (
    "python-", "rust-", "golang-", "perl-", "R-", "nodejs-", "php-", "ghc-", "ocaml-",
    "mingw-", "rubygem-", "lib", "apache-", "jakarta-", "maven-", "plexus-", "jboss-",
    "eclipse-", "glassfish-",
)
_PHP_VENDORS = _words("symfony laminas pear pecl doctrine guzzlehttp monolog sebastian twig")
_JAVA_PREFIXES = _words("apache-commons jakarta maven plexus jboss eclipse glassfish")
_DESKTOP_PREFIXES = _words("gnome kf6 kf5 plasma xfce4 qt6 mate lxqt cinnamon")
_FONT_FOUNDRIES = _words("google adobe dejavu liberation ibm-plex jetbrains mozilla")
_FIRST_NAMES = _words("""
    adam alan alex ana andrea anna ben bill bob carl chris claire dan dave
    david diana dominik elena emma eric eva felix frank fabio gabriel
    george hannah hans igor ivan jack jakub jan jane jason jeff jens jiri
    joe john jonas jorge jose juan julia karel karen kate kevin lars laura
    leo lucas luis marek maria mark martin matt max michael miro miguel
    nick nils oliver olga pablo patrick paul pavel peter petr philip
    pierre rafael ralph richard robert roman ryan sam sara sebastian simon
    sophie stefan stephen steve susan thomas tim tom tomas victor vit
    vojtech will yuri zbigniew zdenek
""")
_LAST_NAMES = _words("""
    smith jones brown miller davis garcia wilson anderson taylor moore
    martin lee walker hall young king wright lopez hill scott green baker
    adams nelson carter mitchell roberts turner phillips campbell parker
    evans edwards collins stewart morris rogers reed cook morgan bell
    murphy bailey rivera cooper richardson cox howard ward torres peterson
    gray ramirez james watson brooks kelly sanders price bennett wood
    barnes ross henderson coleman jenkins perry powell long patterson
    hughes flores washington butler simmons foster gonzales bryant
    alexander russell griffin diaz hayes novak svoboda dvorak cerny
    prochazka kucera vesely horak nemec pokorny marek kratochvil muller
    schmidt schneider fischer weber meyer wagner becker schulz hoffmann
    rossi russo ferrari esposito bianchi romano colombo ricci marino
    dubois moreau laurent simon michel lefebvre leroy roux kowalski
    nowak wisniewski tanaka suzuki sato watanabe ito yamamoto kumar
    sharma singh patel gupta rao reddy silva santos oliveira souza
""")
_NICKS = _words("""
    tux penguin gecko hacker coder ninja pixel byte kernel shell daemon
    sudo root rpmfan fedorian linuxer spin bugfix patch packager compiler
    nerd geek wizard pirate robot cyber quantum nebula comet orbit zen
    turtle panda fox wolf raven otter koala badger falcon lynx
""")

# (group, names it owns by prefix or suffix, share of matching artifacts it
# owns, base member count at 10,000 users): Fedora's SIGs own whole ecosystems,
# which is what makes ``artifacts-group-owned`` rules match often.
_SIG_GROUPS: tuple[tuple[str, tuple[str, ...], float, int], ...] = (
    ("python-packagers-sig", ("python-", "python3-"), 0.35, 60),
    ("rust-sig", ("rust-",), 0.95, 25),
    ("go-sig", ("golang-",), 0.85, 30),
    ("perl-sig", ("perl-",), 0.6, 20),
    ("r-maint-sig", ("R-",), 0.5, 12),
    ("nodejs-sig", ("nodejs-",), 0.7, 15),
    ("php-sig", ("php-",), 0.5, 10),
    ("haskell-sig", ("ghc-",), 0.9, 10),
    ("ocaml-sig", ("ocaml-",), 0.8, 8),
    ("java-maint-sig", ("apache-commons-", "jakarta-", "maven-", "plexus-", "jboss-",
                        "eclipse-", "glassfish-", "java-"), 0.5, 15),
    ("ruby-packagers-sig", ("rubygem-",), 0.6, 12),
    ("mingw-sig", ("mingw-",), 0.9, 6),
    ("fonts-sig", ("-fonts",), 0.7, 10),
    ("kde-sig", ("kf5-", "kf6-", "plasma-", "qt6-"), 0.8, 25),
    ("gnome-sig", ("gnome-",), 0.4, 30),
    ("xfce-sig", ("xfce4-",), 0.8, 6),
    ("lxqt-sig", ("lxqt-",), 0.8, 5),
    ("cinnamon-sig", ("cinnamon-",), 0.8, 5),
    ("mate-sig", ("mate-",), 0.8, 5),
    ("kernel-maint", ("kernel", "linux-firmware"), 1.0, 8),
    ("virtmaint-sig", ("qemu", "libvirt", "virt-"), 1.0, 8),
    ("infra-sig", ("fedmsg", "datanommer", "bodhi", "koji", "pagure", "fedpkg",
                   "mirrormanager", "fedora-messaging"), 0.9, 15),
)
# Groups with no naming pattern: they own a scattering of packages.
_TEAM_GROUPS: tuple[tuple[str, int], ...] = (
    ("neuro-sig", 8), ("astro-sig", 8), ("sci-tech-sig", 10), ("games-sig", 8),
    ("robotics-sig", 6), ("security-sig", 6), ("emacs-sig", 5), ("hams-sig", 5),
    ("i18n-team", 10), ("multimedia-sig", 8), ("desktop-sig", 12), ("server-wg", 8),
    ("iot-wg", 6), ("cloud-sig", 8), ("quality-team", 10), ("releng-team", 6),
)
_TYPE_GROUPS: dict[str, tuple[str, float, int]] = {
    "containers": ("container-sig", 0.5, 10),
    "modules": ("modularity-wg", 0.3, 6),
    "flatpaks": ("flatpak-sig", 0.8, 8),
}

# App names as they appear on the bus (case varies by schema package).
_BUS_APPS = _words("""
    bodhi koji buildsys pagure distgit the-new-hotness anitya copr fas ipa
    noggin discourse bugzilla git fedocal openqa hotness ci.pipeline compose
    github fedbadges nuancier koschei mdapi meetbot greenwave waiverdb
    mirrormanager fedora_elections fedora-image-uploader fmn planet ansible
    pungi odcs
""")
# Combinations people actually ask for (spec section 3 examples first).
_APP_COMBOS: tuple[tuple[str, ...], ...] = (
    ("pagure", "distgit"), ("the-new-hotness", "anitya"), ("bodhi",), ("Bodhi",),
    ("koji", "buildsys"), ("Koji",), ("copr",), ("Copr",), ("bugzilla",), ("Bugzilla",),
    ("discourse",), ("fas", "ipa", "noggin"), ("The New Hotness",), ("pagure",),
    ("bodhi", "koji"), ("anitya",), ("git", "distgit"), ("fedocal", "meetbot"),
)
_NOISY_APPS: tuple[tuple[str, ...], ...] = (
    ("ci.pipeline",), ("compose", "pungi"), ("koschei",), ("openqa",), ("fedbadges",),
    ("github",), ("copr",), ("Copr", "koschei"), ("autocloud",), ("allpackages.pipeline",),
)
_SEVERITY_SETS: tuple[tuple[str, ...], ...] = (
    ("WARNING", "ERROR"), ("ERROR",), ("INFO", "WARNING", "ERROR"),
    ("DEBUG", "INFO", "WARNING", "ERROR"), ("WARNING",), ("DEBUG",),
)
# Generation-rule topic globs people write by hand.
_FILTER_TOPICS = _words("""
    *.buildsys.build.state.change *.bodhi.update.* *.bodhi.update.request.*
    org.fedoraproject.prod.bodhi.update.comment *.pagure.pull-request.*
    *.pagure.issue.* *.copr.build.end *.anitya.project.version.update*
    *.hotness.update.bug.file *.git.receive *.bugzilla.bug.* org.fedoraproject.prod.*
    *.discourse.post.* *.buildsys.tag org.release-monitoring.prod.anitya.*
""")
# (path, values) pairs that exist in real message bodies (checked against the
# shared messages): koji's numeric build states, bodhi's update fields, ...
_FIELD_SETS: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...] = (
    (("new", (1,)),),
    (("new", (1,)), ("instance", ("primary",))),
    (("new", (3,)),),
    (("new", (1, 3)),),
    (("instance", ("primary",)),),
    (("update.status", ("stable", "testing")),),
    (("update.request", ("stable",)),),
    (("update.type", ("security",)),),
    (("update.release.name", ("F29", "F30")),),
    (("status", ("SUCCESS",)),),
    (("pullrequest.status", ("Merged",)),),
    (("issue.status", ("Open",)),),
    (("branch", ("rawhide",)),),
    (("commit.branch", ("main", "master")),),
    (("chroot", ("fedora-29-x86_64", "fedora-29-aarch64")),),
    (("update.critpath", (True,)),),
)
_EMAIL_DOMAINS: tuple[tuple[str, float], ...] = (
    ("fedoraproject.org", 0.6), ("gmail.com", 0.8), ("redhat.com", 0.9),
    ("posteo.de", 0.94), ("protonmail.com", 0.97), ("example.org", 1.0),
)
_DIGEST_INTERVALS = (300, 900, 3600, 14_400, 86_400, 604_800)
_DIGEST_COUNTS = (5, 10, 25, 50, 100)


# --------------------------------------------------------------------------
# the names taken from the shared messages


@dataclass(frozen=True, slots=True)
class FedoraNames:
    """Names seen on the bus, most frequent first (``data/fedora_names.json``)."""

    usernames: tuple[str, ...]
    artifacts: dict[str, tuple[str, ...]]
    app_names: tuple[str, ...]
    topics: tuple[str, ...]


@functools.cache
def fedora_names() -> FedoraNames:
    """The embedded names from the shared messages.

    ``data/fedora_names.json`` was built once from
    ``shared/data/golden/metadata.jsonl``: every non-empty string in the
    fields usernames, agent_name, rpms, containers, modules, flatpaks, topic
    and app_name, most frequent first.  Read lazily (no I/O at import).
    """
    raw = resources.files("fmn").joinpath("data/fedora_names.json").read_text("utf-8")
    data = json.loads(raw)
    return FedoraNames(
        usernames=tuple(data["usernames"]),
        artifacts={t: tuple(data[t]) for t in ARTIFACT_TYPES},
        app_names=tuple(data["app_names"]),
        topics=tuple(data["topics"]),
    )


# --------------------------------------------------------------------------
# the artifact universe (seed-independent, cached)


def _zipf(n: int, exponent: float, offset: float = 1.0) -> list[float]:
    """Weight of rank r is ``1 / (r + offset) ** exponent``, normalised to sum 1.

    The offset flattens the very top so that the head is a handful of giants,
    not one.
    """
    weights = [(r + offset) ** -exponent for r in range(n)]
    total = sum(weights) or 1.0
    return [w / total for w in weights]


T = TypeVar("T")


def _pick(rand: Callable[[], float], seq: Sequence[T]) -> T:
    """``rng.choice`` at a fraction of the cost (one float, no rejection loop)."""
    return seq[int(rand() * len(seq))]


class _Picker(Generic[T]):
    """Weighted draws (a bisect on cumulative weights) from a fixed sequence."""

    __slots__ = ("items", "cum", "total")

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        self.items = tuple(items)
        self.cum = list(accumulate(weights))
        self.total = self.cum[-1] if self.cum else 0.0

    @classmethod
    def zipf(cls, items: Sequence[T], exponent: float, offset: float = 1.0) -> _Picker[T]:
        return cls(items, _zipf(len(items), exponent, offset))

    def one(self, rand: Callable[[], float]) -> T:
        return self.items[bisect_left(self.cum, rand() * self.total)]

    def distinct(self, rand: Callable[[], float], k: int) -> list[T]:
        """Up to ``k`` distinct items (fewer when the draws keep colliding)."""
        k = min(k, len(self.items))
        out: dict[T, None] = {}
        for _ in range(4 * k):
            out[self.one(rand)] = None
            if len(out) >= k:
                break
        return list(out)


@dataclass(frozen=True, slots=True)
class _Universe:
    #: artifact type -> names, most popular first
    artifacts: dict[str, tuple[str, ...]]
    #: what one follow picks: type mix times each type's popularity
    followed: _Picker[Artifact]
    #: artifact type -> name -> the group that co-owns it (absent: none)
    sig_owner: dict[str, dict[str, str]]
    topic_patterns: _Picker[str]
    filter_topics: tuple[str, ...]
    apps: tuple[str, ...]


def _rpm_name(rng: random.Random) -> str:
    """One synthetic rpm name, families weighted roughly as in Fedora."""
    s, c = _STEMS, _CAMEL
    f = rng.random()
    if f < 0.16:
        base = rng.choice(s) if rng.random() < 0.6 else f"{rng.choice(s)}-{rng.choice(s)}"
        return f"python-{base}"
    if f < 0.29:
        sep = rng.choice("-_")
        base = rng.choice(s) if rng.random() < 0.4 else f"{rng.choice(s)}{sep}{rng.choice(s)}"
        tail = rng.choice(("", "", "", "-sys", "-derive", "-macros", "-core"))
        return f"rust-{base}{tail}"
    if f < 0.38:
        g = rng.random()
        if g < 0.8:
            return f"golang-github-{rng.choice(_GO_OWNERS)}-{rng.choice(s)}" + (
                "" if rng.random() < 0.6 else f"-{rng.choice(s)}")
        if g < 0.9:
            return f"golang-x-{rng.choice(s)}"
        return f"golang-gopkg-{rng.choice(s)}-v{rng.randint(1, 5)}"
    if f < 0.52:
        return "perl-" + "-".join(rng.sample(c, rng.choice((2, 2, 3, 3, 4))))
    if f < 0.55:
        base = rng.choice(s)
        return f"R-{base.capitalize() if rng.random() < 0.4 else base}" + (
            "" if rng.random() < 0.8 else f".{rng.choice(s)}")
    if f < 0.59:
        return f"nodejs-{rng.choice(s)}" + ("" if rng.random() < 0.5 else f"-{rng.choice(s)}")
    if f < 0.63:
        return f"php-{rng.choice(_PHP_VENDORS)}-{rng.choice(s)}"
    if f < 0.66:
        return "ghc-" + "-".join(rng.sample(c, rng.choice((1, 2, 2))))
    if f < 0.67:
        return f"ocaml-{rng.choice(s)}"
    if f < 0.69:
        return f"mingw-{rng.choice(s)}"
    if f < 0.73:
        return f"{rng.choice(_JAVA_PREFIXES)}-{rng.choice(s)}"
    if f < 0.76:
        return f"rubygem-{rng.choice(s)}" + ("" if rng.random() < 0.6 else f"-{rng.choice(s)}")
    if f < 0.82:
        return f"lib{rng.choice(s)}" + ("" if rng.random() < 0.8 else str(rng.randint(1, 9)))
    if f < 0.84:
        foundry = "" if rng.random() < 0.5 else f"{rng.choice(_FONT_FOUNDRIES)}-"
        return f"{foundry}{rng.choice(s)}-fonts"
    if f < 0.88:
        return f"{rng.choice(_DESKTOP_PREFIXES)}-{rng.choice(s)}"
    g = rng.random()
    if g < 0.5:
        return f"{rng.choice(s)}{rng.choice(s)}"
    if g < 0.8:
        return f"{rng.choice(s)}-{rng.choice(s)}"
    return f"{rng.choice(s)}{rng.randint(2, 9)}"


def _fill(rng: random.Random, head: Sequence[str], size: int,
          make: Callable[[random.Random], str]) -> list[str]:
    """``head`` (deduplicated, in order) then fresh names from ``make`` up to ``size``."""
    out: dict[str, None] = dict.fromkeys(head)
    while len(out) < size:
        out[make(rng)] = None
    return list(out)


def _scatter(rng: random.Random, ranked: list[str], keep: int,
             extra: Sequence[str]) -> list[str]:
    """``ranked`` with each name of ``extra`` moved to a random rank after the first ``keep``.

    The list keeps its length: the last ranks make room for the newcomers.
    """
    extra = [n for n in dict.fromkeys(extra) if n not in ranked[:keep]]
    extra_set = set(extra)
    rest = [n for n in ranked[keep:] if n not in extra_set]
    rest = rest[:max(0, len(ranked) - keep - len(extra))]
    for name in extra:
        rest.insert(rng.randrange(len(rest) + 1), name)
    return ranked[:keep] + rest


def _topic_globs(topic: str) -> list[str]:
    """Globs a person would write for a topic: exact, any env, whole app, ..."""
    parts = topic.split(".")
    if len(parts) >= 5 and parts[2] in ("prod", "stg", "dev", "stage"):
        prefix, rest = parts[:3], parts[3:]
    else:
        prefix, rest = [], parts
    out = [topic, "*." + ".".join(rest)]
    if prefix:
        out.append(".".join(prefix + rest[:1]) + ".*")
        out.append(".".join(prefix[:2]) + ".*." + ".".join(rest))
    if len(rest) > 2:
        out.append("*." + ".".join(rest[:2]) + ".*")
    return out


@functools.cache
def _universe() -> _Universe:
    rng = random.Random(_UNIVERSE_SEED)
    names = fedora_names()
    msg = names.artifacts
    # The famous packages lead the popularity ranks.  The message packages
    # take random ranks among the rest, like any package a bus message is
    # about: a replayed message fans out to as many people as its package's
    # rank gives, not to a head placed there for it.
    heads = {
        "rpms": list(dict.fromkeys(_FAMOUS_RPMS)),
        "containers": list(dict.fromkeys(_FAMOUS_CONTAINERS)),
        "modules": list(dict.fromkeys(_FAMOUS_MODULES)),
        "flatpaks": list(dict.fromkeys(_FAMOUS_FLATPAKS)),
    }
    rpms = _scatter(rng, _fill(rng, heads["rpms"], UNIVERSE_SIZES["rpms"], _rpm_name),
                    len(heads["rpms"]), msg["rpms"])
    # Containers, modules and flatpaks mostly carry the name of the
    # application or service they ship, i.e. an rpm name outside the language
    # ecosystems, libraries and fonts.
    apps_like = [n for n in rpms[len(heads["rpms"]):]
                 if not n.startswith(_ECOSYSTEM_PREFIXES) and not n.endswith("-fonts")]

    def from_rpms(r: random.Random) -> str:
        return apps_like[r.randrange(len(apps_like))]

    artifacts = {"rpms": tuple(rpms)}
    for atype in ARTIFACT_TYPES[1:]:
        artifacts[atype] = tuple(_scatter(
            rng, _fill(rng, heads[atype], UNIVERSE_SIZES[atype], from_rpms),
            len(heads[atype]), msg[atype]))

    # Followers: a Zipf tail over the whole universe, plus a flatter share
    # for the head (famous and message artifacts), which is what people
    # follow most; at 100,000 users the giants get thousands of followers,
    # the message packages hundreds to thousands, the median artifact a few.
    follow_items: list[Artifact] = []
    follow_weights: list[float] = []
    for atype, items in artifacts.items():
        tail_w = _zipf(len(items), exponent=1.0, offset=3.0)
        head_w = _zipf(len(heads[atype]), exponent=0.5)
        weights = [(1 - _HEAD_SHARE) * w for w in tail_w]
        for r, w in enumerate(head_w):
            weights[r] += _HEAD_SHARE * w
        follow_items += (Artifact(atype, name) for name in items)
        follow_weights += (_FOLLOW_TYPE_SHARE[atype] * w for w in weights)
    followed = _Picker(follow_items, follow_weights)

    sig_owner: dict[str, dict[str, str]] = {t: {} for t in ARTIFACT_TYPES}
    famous = set(heads["rpms"])
    for name in rpms:
        for group, patterns, share, _size in _SIG_GROUPS:
            if any(name.startswith(p) or name.endswith(p) for p in patterns):
                if rng.random() < share:
                    sig_owner["rpms"][name] = group
                break
        else:
            # Teams co-own a scattering of the lesser-known packages.
            if name not in famous and rng.random() < 0.04:
                sig_owner["rpms"][name] = rng.choice(_TEAM_GROUPS)[0]
    for atype, (group, share, _size) in _TYPE_GROUPS.items():
        for name in artifacts[atype]:
            if rng.random() < share:
                sig_owner[atype][name] = group

    globs: dict[str, None] = {}
    for topic in names.topics:
        globs.update(dict.fromkeys(_topic_globs(topic)))
    pattern_list = list(globs)
    rng.shuffle(pattern_list)

    apps: dict[str, None] = dict.fromkeys(_BUS_APPS)
    known = {a.lower() for a in apps}
    apps.update((a, None) for a in names.app_names if a.lower() not in known)
    return _Universe(
        artifacts=artifacts,
        followed=followed,
        sig_owner=sig_owner,
        topic_patterns=_Picker.zipf(pattern_list, exponent=0.9, offset=2.0),
        filter_topics=_FILTER_TOPICS + tuple(pattern_list[:40]),
        apps=tuple(apps),
    )


# --------------------------------------------------------------------------
# users, groups and ownership (per seed)


def _account_name(rng: random.Random) -> str:
    rand = rng.random
    first, last = _pick(rand, _FIRST_NAMES), _pick(rand, _LAST_NAMES)
    style = rand()
    if style < 0.35:
        return first[0] + last
    if style < 0.45:
        return first
    if style < 0.55:
        return first + last
    if style < 0.6:
        return f"{first}_{last}"
    if style < 0.7:
        return first + last[0]
    if style < 0.85:
        return f"{_pick(rand, _NICKS)}{int(rand() * 999) + 1}"
    return f"{first}-{last}"


def _user_names(count: int, rng: random.Random) -> list[str]:
    """The message names first (most frequent first), then unique synthetic ones."""
    out: dict[str, None] = dict.fromkeys(fedora_names().usernames[:count])
    while len(out) < count:
        name = _account_name(rng)
        while name in out:
            # A taken name gets digits appended, as the account system suggests.
            name = f"{name}{int(rng.random() * 10)}"
        out[name] = None
    return list(out)


_OPENID = re.compile(r"https?://([^./]+)\.id\.fedoraproject\.org")
_NOT_HANDLE = re.compile(r"[^A-Za-z0-9_.-]")
#: what an IRC nick cannot hold (dots, say: "quantum.analyst" is no nick)
_NOT_NICK = re.compile(r"[^A-Za-z0-9\[\]\\`_^{|}-]")
#: account names that are e-mail addresses (not, say, "@python", a mention)
_EMAILISH = re.compile(r"[A-Za-z0-9_.+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")


def _handle(name: str) -> str:
    """An IRC/Matrix/e-mail handle for any account name (OpenID URLs included)."""
    match = _OPENID.match(name)
    if match:
        return match.group(1)
    return _NOT_HANDLE.sub("", name.split("@")[0]) or "user"


def _groups(rng: random.Random, packagers: _Picker[str], users: int) -> dict[str, tuple[str, ...]]:
    """Group -> members, members drawn from the packagers (busy ones join more)."""
    scale = min(3.0, max(0.2, users / 10_000))
    specs = [(g, size) for g, _p, _s, size in _SIG_GROUPS] + list(_TEAM_GROUPS)
    specs += [(g, size) for g, _s, size in _TYPE_GROUPS.values()]
    out: dict[str, tuple[str, ...]] = {}
    for group, base in specs:
        size = max(2, round(base * scale))
        out[group] = tuple(packagers.distinct(rng.random, size))
    return out


def _owners(rng: random.Random, uni: _Universe,
            packagers: _Picker[str]) -> dict[str, dict[str, Owners]]:
    """Every artifact gets one or more user owners (more for the popular ones)."""
    out: dict[str, dict[str, Owners]] = {}
    counts = (1, 2, 3, 4, 5, 6)
    cum = list(accumulate((60, 22, 9, 5, 2, 2)))
    for atype in ARTIFACT_TYPES:
        table: dict[str, Owners] = {}
        sig = uni.sig_owner[atype]
        for rank, name in enumerate(uni.artifacts[atype]):
            if not packagers.items:
                users: tuple[str, ...] = ()
            else:
                n = rng.randint(3, 10) if rank < 100 else rng.choices(counts, cum_weights=cum)[0]
                users = tuple(packagers.distinct(rng.random, n))
            group = sig.get(name)
            table[name] = Owners(users=users, groups=(group,) if group else ())
        # Sorted by name: the order dist-git publishes, and diff-friendly.
        out[atype] = dict(sorted(table.items()))
    return out


# --------------------------------------------------------------------------
# one user's destinations and rules


def _cased(rand: Callable[[], float], app: str) -> str:
    """Application names are compared case-insensitively: people type them any way."""
    r = rand()
    if r < 0.7:
        return app
    if r < 0.82:
        return app.lower()
    if r < 0.9:
        return app.upper()
    return app.title()


def _cum(weights: Sequence[float]) -> list[float]:
    """Cumulative weights normalised to end at 1, for ``bisect_left(cum, rand())``."""
    cum = list(accumulate(weights))
    return [c / cum[-1] for c in cum]


# Shared frozen values: most users carry identical default rules, so they can
# share the objects (which also keeps 100,000 users cheap to build).
_NO_FILTERS = Filters()
_NOT_MINE = Filters(my_actions=False)
_OWNED = Tracking("artifacts-owned")
_RELATED = Tracking("related-events")
# The defaults go to the first destination, whose id is always "d1".
_MY_PACKAGES_GENS = (GenerationRule(_NO_FILTERS, ("d1",)),)
_MY_EVENTS_GENS = (GenerationRule(_NOT_MINE, ("d1",)),)
# The three examples of the FMN announcement (spec section 3): name, filters
# and the protocol they go to.
_ANNOUNCEMENT_RULES: tuple[tuple[str, Filters, str], ...] = (
    ("Koji builds of my packages",
     Filters(topic="*.buildsys.build.state.change", fields=(("new", (1,)),)), "irc"),
    ("Requests on my packages", Filters(applications=("pagure", "distgit")), "email"),
    ("New upstream versions", Filters(applications=("the-new-hotness", "anitya")), "irc"),
)
_KIND_CUM = _cum((38, 18, 14, 14, 10, 6))  # followed, users, topics, groups, owned, related
_FOLLOW_COUNT_CUM = _cum([k ** -1.4 for k in range(1, 51)])  # artifacts per rule: 1..50
_PEOPLE_COUNT_CUM = _cum([k ** -1.5 for k in range(1, 16)])  # people per rule: 1..15
_EXTRA_RULES_CUM = _cum((35, 25, 16, 10, 7, 4, 3))  # beyond the two defaults: 0..6
_OWN_RULES_CUM = _cum((40, 30, 15, 8, 4, 3))  # without the defaults: 1..6


def _destinations(rand: Callable[[], float], name: str) -> tuple[Destination, ...]:
    handle = _handle(name)
    wanted: list[str] = []
    if rand() < 0.93:
        wanted.append("email")
    if rand() < 0.35:
        wanted.append("irc")
    if rand() < 0.25:
        wanted.append("matrix")
    if rand() < 0.3 or not wanted:
        wanted.append("sse")
    out: list[Destination] = []
    for i, proto in enumerate(wanted, start=1):
        address: str | None
        if proto == "email":
            if _EMAILISH.match(name):
                address = name
            else:
                d = rand()
                domain = _EMAIL_DOMAINS[-1][0]
                for dom, upto in _EMAIL_DOMAINS:
                    if d < upto:
                        domain = dom
                        break
                address = f"{handle}@{domain}"
            # Unverified: an address typed in but never confirmed.
            verified, digest_p = rand() < 0.95, 0.12
        elif proto == "irc":
            nick = _NOT_NICK.sub("", handle)[:30].lstrip("0123456789-") or "user"
            address = nick if rand() < 0.9 else f"{nick}_"
            verified, digest_p = rand() < 0.85, 0.03
        elif proto == "matrix":
            address = f"@{handle.lower()}:{'fedora.im' if rand() < 0.7 else 'matrix.org'}"
            verified, digest_p = rand() < 0.8, 0.05
        else:
            address, verified, digest_p = None, rand() < 0.97, 0.0
        digest = None
        if digest_p and rand() < digest_p:
            digest = Digest(interval_s=_pick(rand, _DIGEST_INTERVALS),
                            max_count=_pick(rand, _DIGEST_COUNTS))
        out.append(Destination(id=f"d{i}", protocol=proto, address=address,
                               verified=verified, digest=digest))
    return tuple(out)


class _UserMaker:
    """Builds users from shared, per-seed state (pickers and group membership)."""

    def __init__(self, rng: random.Random, uni: _Universe, people: _Picker[str],
                 groups: dict[str, tuple[str, ...]]) -> None:
        self.rand = rng.random
        self.uni = uni
        self.people = people
        # Bigger groups are better known, so more often followed by outsiders.
        self.group_picker = _Picker.zipf(
            sorted(groups, key=lambda g: (-len(groups[g]), g)), exponent=0.8)
        self.member_of: dict[str, list[str]] = {}
        for group, members in groups.items():
            for member in members:
                self.member_of.setdefault(member, []).append(group)

    # -- filters ------------------------------------------------------------

    def _filters(self) -> Filters:
        rand = self.rand
        applications = excluded = severities = fields = None
        topic = None
        my_actions: bool | None = None
        if rand() < 0.25:
            if rand() < 0.6:
                combo = _pick(rand, _APP_COMBOS)
            else:
                combo = tuple(dict.fromkeys(_pick(rand, self.uni.apps)
                                            for _ in range(1 + int(rand() * 3))))
            applications = tuple(_cased(rand, a) for a in combo)
        if rand() < 0.12:
            excluded = tuple(_cased(rand, a) for a in _pick(rand, _NOISY_APPS))
        if rand() < 0.15:
            severities = _pick(rand, _SEVERITY_SETS)
        if rand() < 0.15:
            topic = _pick(rand, self.uni.filter_topics)
        r = rand()
        if r < 0.3:
            my_actions = False
        elif r < 0.5:
            my_actions = True
        if rand() < 0.08:
            fields = _pick(rand, _FIELD_SETS)
        return Filters(applications=applications, excluded_applications=excluded,
                       severities=severities, topic=topic, my_actions=my_actions,
                       fields=fields)

    def _dest_ids(self, dests: tuple[Destination, ...]) -> tuple[str, ...]:
        rand = self.rand
        if len(dests) == 1 or rand() < 0.6:
            return (dests[0].id if rand() < 0.75 else _pick(rand, dests).id,)
        # Several at once, in the user's own order.
        chosen = [d.id for d in dests if rand() < 0.7]
        return tuple(chosen) or (dests[-1].id,)

    def _generation_rules(self, dests: tuple[Destination, ...]) -> tuple[GenerationRule, ...]:
        r = self.rand()
        n = 1 if r < 0.75 else 2 if r < 0.95 else 3
        return tuple(GenerationRule(self._filters(), self._dest_ids(dests)) for _ in range(n))

    # -- tracking -----------------------------------------------------------

    def _custom_rule(self, rule_id: str, user: str, dests: tuple[Destination, ...]) -> Rule:
        rand = self.rand
        kind = bisect_left(_KIND_CUM, rand())
        gens: tuple[GenerationRule, ...] | None = None
        if kind == 0:
            n = 1 + bisect_left(_FOLLOW_COUNT_CUM, rand())
            arts = self.uni.followed.distinct(rand, n)
            first = arts[0].name
            name = _pick(rand, ("Followed packages", "Packages I care about",
                                f"{first} and friends", f"Watch {first}", "Stack"))
            tracking = Tracking("artifacts-followed", artifacts=tuple(arts))
        elif kind == 1:
            n = 1 + bisect_left(_PEOPLE_COUNT_CUM, rand())
            names = [u for u in self.people.distinct(rand, n) if u != user]
            if not names:
                # Only this user exists: follow a message name anyway.
                names = [next(u for u in fedora_names().usernames if u != user)]
            name = _pick(rand, ("People I follow", f"What {names[0]} does", "Team"))
            tracking = Tracking("users-followed", usernames=tuple(names))
        elif kind == 2:
            patterns = tuple(self.uni.topic_patterns.distinct(rand, _pick(rand, (1, 1, 1, 2, 3))))
            name = _pick(rand, ("Topics", "Infra events", f"Watch {patterns[0]}"))
            tracking = Tracking("topics", patterns=patterns)
        elif kind == 3:
            mine = self.member_of.get(user)
            n = _pick(rand, (1, 1, 1, 2, 3))
            # Mostly one's own groups; sometimes a well-known group one is not in.
            if mine and rand() < 0.75:
                groups = list(dict.fromkeys(_pick(rand, mine) for _ in range(n)))
            else:
                groups = self.group_picker.distinct(rand, n)
            name = f"{groups[0]} packages"
            tracking = Tracking("artifacts-group-owned", groups=tuple(groups))
        elif kind == 4:
            name, filters, proto = _pick(rand, _ANNOUNCEMENT_RULES)
            dest = next((d.id for d in dests if d.protocol == proto), dests[0].id)
            tracking = _OWNED
            gens = (GenerationRule(filters, (dest,)),)
        else:
            name = _pick(rand, ("Mentions", "My events (chat)", "Things about me"))
            tracking = _RELATED
        return Rule(id=rule_id, name=name, enabled=rand() >= 0.05, tracking=tracking,
                    generation_rules=gens or self._generation_rules(dests))

    def user(self, name: str) -> User:
        rand = self.rand
        dests = _destinations(rand, name)
        rules: list[Rule] = []
        if rand() < 0.88:
            # FMN creates these two for every new account; most keep them as
            # they are, going to their first destination.
            mine, events = _MY_PACKAGES_GENS, _MY_EVENTS_GENS
            if rand() < 0.15:
                mine = (GenerationRule(self._filters(), self._dest_ids(dests)),)
            rules.append(Rule(id="r1", name="My packages", enabled=rand() >= 0.03,
                              tracking=_OWNED, generation_rules=mine))
            rules.append(Rule(id="r2", name="My events", enabled=rand() >= 0.03,
                              tracking=_RELATED, generation_rules=events))
            extra = bisect_left(_EXTRA_RULES_CUM, rand())
        else:
            extra = 1 + bisect_left(_OWN_RULES_CUM, rand())
        for _ in range(extra):
            rules.append(self._custom_rule(f"r{len(rules) + 1}", name, dests))
        return User(name=name, enabled=rand() >= 0.03, destinations=dests, rules=tuple(rules))


# --------------------------------------------------------------------------
# entry point


def generate_preferences(users: int, seed: int) -> Preferences:
    """``users`` Fedora-like users, the fixed artifact universe and its owners.

    Deterministic for ``(users, seed)`` on one Python version.  The first
    users are the names seen in the shared messages (most frequent first), so
    fewer users than that keeps only the most frequent ones.
    """
    if users < 0:
        raise ValueError(f"users must be >= 0, not {users}")
    # Millions of small frozen objects and no cycles among them: the cyclic
    # collector would rescan them over and over (doubling the time at
    # 100,000 users) and never free anything.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(users, seed)
    finally:
        if gc_was_enabled:
            gc.enable()


def _generate(users: int, seed: int) -> Preferences:
    rng = random.Random(seed)
    uni = _universe()
    names = _user_names(users, rng)
    real = set(fedora_names().usernames)

    # Packagers: every message name plus about one account in five; a few
    # busy ones own hundreds of packages, most own one or two.
    packager_list = [n for n in names if n in real or rng.random() < 0.2]
    rng.shuffle(packager_list)
    packagers = _Picker.zipf(packager_list, exponent=0.8)
    groups = _groups(rng, packagers, users)
    owners = _owners(rng, uni, packagers)

    # Who gets followed: the people in the messages are active contributors,
    # so they take random ranks in the busiest fifth; everyone else follows
    # in a seed-shuffled order.
    others = [n for n in names if n not in real]
    rng.shuffle(others)
    active = others[:max(1, len(others) // 5)]
    for name in (n for n in names if n in real):
        active.insert(rng.randrange(len(active) + 1), name)
    people = _Picker.zipf(active + others[len(active) - sum(n in real for n in names):],
                          exponent=1.0, offset=2.0)

    maker = _UserMaker(rng, uni, people, groups)
    return Preferences(users=tuple(maker.user(n) for n in names), owners=owners, groups=groups)
