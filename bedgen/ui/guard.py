"""The app's front door: which host names it answers to, how fast a visitor may guess
passwords, and how much queued work one visitor may hold.

One ASGI middleware, :class:`Guard`, attached by ``bedgen.ui.app.main`` in front of
Gradio's routes:

- **Hosts** (local apps only). A page on ``evil.example`` can make a browser send
  requests to ``127.0.0.1`` (DNS rebinding: the name is re-pointed at the local
  address), and cross-site requests from any page reach a local app too. A local app
  therefore answers only when the ``Host`` names it locally (``localhost``, an IP
  address, the name given to ``--host``, or a name in ``BEDGEN_ALLOWED_HOSTS``), and
  when an ``Origin`` is sent, only to pages served under such a name. IP addresses are
  safe to accept: rebinding needs a DNS name, and a page's own address is its origin.
  A public app (Space, ``--share``) is reached under its public name and skips this.
- **Login** (when ``BEDGEN_AUTH`` is set): :class:`LoginThrottle` answers ``POST
  /login`` with HTTP 429 after repeated wrong passwords from one address, for a time
  that doubles with each lockout, and caps login attempts over all addresses.
- **Work**: a request is work for the queue (``/gradio_api/call/*``,
  ``/gradio_api/queue/join``). :class:`WorkWatch` refuses a visitor's new request while
  ``BEDGEN_MAX_PENDING_PER_VISITOR`` of theirs are waiting or running, and (in public
  mode by default) cancels a request whose result stream nobody has opened within
  ``BEDGEN_ABANDON_AFTER_S`` seconds. Gradio itself drops a waiting request whose stream
  is closed; a running one stops at its next progress update (every denoising step),
  see :meth:`WorkWatch.stop_dead_events`.

A visitor is the connection's address. uvicorn (which Gradio runs) already replaces it
by the ``X-Forwarded-For`` address when the connection comes from 127.0.0.1 (its
``FORWARDED_ALLOW_IPS`` default), as through ``--share``'s local tunnel. On a Space the
connection comes from Hugging Face's proxy; see :func:`visitor_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import re
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

from ..core.errors import BedgenError
from .settings import AppSettings, env_int

if TYPE_CHECKING:
    import gradio as gr

API = "/gradio_api"
# Routes that add an event to the queue, and routes that stream an event's result.
QUEUE_POSTS = re.compile(rf"^{API}/(queue/join|call/(v2/)?[^/]+)/?$")
RESULT_STREAMS = re.compile(rf"^{API}/(queue/data|call/(v2/)?[^/]+/(?P<event_id>[^/]+))/?$")
LOGIN = ("/login", "/login/")
MAX_LOCKOUT_S = 3600


def _say(message: str) -> None:
    print(f"bedgen app: {message}", flush=True)


@dataclass(frozen=True)
class GuardSettings:
    public: bool
    allowed_hosts: frozenset[str] = frozenset()  # names a local app answers to besides localhost and IPs
    behind_space_proxy: bool = False  # on a Hugging Face Space: see visitor_of
    login: bool = False  # the app has a login page (BEDGEN_AUTH)
    login_lockout_s: int = 60  # first lockout after repeated wrong passwords; doubles each time
    max_pending_per_visitor: int = 0  # requests waiting or running per visitor; 0 = no limit
    abandon_after_s: int = 0  # a request nobody reads for this long is cancelled; 0 = never

    @classmethod
    def from_env(cls, settings: AppSettings, host: str | None = None) -> "GuardSettings":
        names = {n.strip().lower() for n in os.environ.get("BEDGEN_ALLOWED_HOSTS", "").split(",") if n.strip()}
        if host and host not in ("0.0.0.0", "::"):
            names.add(host.strip("[]").lower())  # the name the owner bound the app to
        return cls(
            public=settings.public,
            allowed_hosts=frozenset(names),
            behind_space_proxy=bool(os.environ.get("SPACE_ID")),
            login=bool(settings.auth),
            login_lockout_s=env_int("BEDGEN_LOGIN_LOCKOUT_S", 60),
            # A browser tab holds one or two queued events at a time; a script that floods does not.
            max_pending_per_visitor=env_int("BEDGEN_MAX_PENDING_PER_VISITOR", 4 if settings.public else 0),
            # A browser opens the result stream right after sending; 30 s also covers a slow
            # network. Off locally: the owner's own scripts may read late on a busy machine.
            abandon_after_s=env_int("BEDGEN_ABANDON_AFTER_S", 30 if settings.public else 0),
        )


# --- who is asking, and under which name ------------------------------------------------------


def _headers(scope: dict) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def visitor_of(scope: dict, behind_space_proxy: bool) -> str:
    """The address a request comes from.

    On a Space every connection comes from Hugging Face's proxy, which appends the address
    it saw to ``X-Forwarded-For``. A client may put anything to the left of it, so the
    rightmost public address is taken (internal hops of the proxy are private addresses).
    Elsewhere the header is not trusted: anyone could claim to be anyone.
    """
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    if behind_space_proxy:
        for item in reversed(_headers(scope).get("x-forwarded-for", "").split(",")):
            try:
                address = ipaddress.ip_address(item.strip())
            except ValueError:
                continue
            if address.is_global:
                return str(address)
    return peer


def _name(netloc: str) -> str | None:
    """``host[:port]`` (as in Host or an origin) -> the lower-case host name, None if unreadable."""
    try:
        return urlsplit(f"//{netloc}").hostname or None
    except ValueError:
        return None


def host_refusal(scope: dict, allowed: frozenset[str]) -> str | None:
    """Why a local app must not answer this request (DNS rebinding, cross-site pages), or None."""

    def local(name: str | None) -> bool:
        if name is None:
            return False
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name == "localhost" or name in allowed

    headers = _headers(scope)
    host = headers.get("host", "")
    if not local(_name(host)):
        return f"host {host[:100]!r} is not allowed: {_LOCAL_ONLY}"
    origin = headers.get("origin")
    if origin is not None and not local(_name(urlsplit(origin).netloc) if "://" in origin else None):
        return f"requests from pages on {origin[:100]!r} are not allowed: {_LOCAL_ONLY}"
    return None


_LOCAL_ONLY = ("this local app answers to localhost and IP addresses only "
               "(its owner may add names with BEDGEN_ALLOWED_HOSTS)")


# --- login --------------------------------------------------------------------------------------


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


class LoginThrottle:
    """Failed logins per address, and a token bucket over all of them.

    ``free_attempts`` wrong passwords in a row lock an address out for ``lockout_s``;
    each further wrong password after a lockout locks it again for twice as long (at
    most an hour). A successful login forgets the address. The bucket (``global_per_s``
    attempts a second, bursts of ``global_burst``) bounds guessing from many addresses.
    """

    def __init__(self, lockout_s: float, free_attempts: int = 5, global_per_s: float = 10,
                 global_burst: int = 20, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000):
        self.lockout_s, self.free_attempts = lockout_s, free_attempts
        self.global_per_s, self.global_burst = global_per_s, global_burst
        self.clock, self.max_clients = clock, max_clients
        self.clients: OrderedDict[str, _Failures] = OrderedDict()
        self.tokens, self.refilled = float(global_burst), clock()

    def refusal(self, who: str) -> str | None:
        """Why ``who`` may not try a password now, or None (then one attempt is counted)."""
        now = self.clock()
        failures = self.clients.get(who)
        if failures is not None and failures.locked_until > now:
            wait = math.ceil(failures.locked_until - now)
            return f"too many failed logins from your address; try again in {wait} s"
        self.tokens = min(self.global_burst, self.tokens + (now - self.refilled) * self.global_per_s)
        self.refilled = now
        if self.tokens < 1:
            return "too many login attempts on this app right now; try again in a few seconds"
        self.tokens -= 1
        return None

    def record(self, who: str, success: bool) -> None:
        if success:
            self.clients.pop(who, None)
            return
        failures = self.clients.setdefault(who, _Failures())
        self.clients.move_to_end(who)
        failures.count += 1
        lockouts = failures.count - self.free_attempts  # 0 at the first lockout
        if lockouts >= 0:
            failures.locked_until = self.clock() + min(self.lockout_s * 2 ** min(lockouts, 20), MAX_LOCKOUT_S)
        while len(self.clients) > self.max_clients:
            self.clients.popitem(last=False)  # the address that failed longest ago


# --- work in the queue --------------------------------------------------------------------------


class ClientGone(BedgenError):
    """Raised inside a running event whose client is gone, to stop its work."""


class WorkWatch:
    """Per-visitor admission to Gradio's queue, and cancellation of work nobody reads."""

    def __init__(self, blocks: "gr.Blocks", settings: GuardSettings):
        self.blocks, self.settings = blocks, settings
        self.readers: Counter[str] = Counter()  # session hashes / event ids with an open result stream
        self.admitting: Counter[str] = Counter()  # visitors whose queue request is being handled
        self.reaper: asyncio.Task | None = None

    @property
    def queue(self) -> Any:
        return self.blocks._queue  # Gradio's queue: it holds every waiting and running event

    def live_events(self) -> Iterator[Any]:
        for waiting in self.queue.event_queue_per_concurrency_id.values():
            yield from (event for event in waiting.queue if event.alive)
        for job in self.queue.active_jobs:
            yield from (event for event in job or () if event.alive)

    def visitor(self, scope: dict) -> str:
        return visitor_of(scope, self.settings.behind_space_proxy)

    def refusal(self, who: str) -> str | None:
        """Why ``who`` may not queue more work now, or None."""
        cap = self.settings.max_pending_per_visitor
        if cap <= 0:
            return None
        pending = self.admitting[who] + sum(1 for e in self.live_events() if self.visitor(e.request.scope) == who)
        if pending >= cap:
            return (f"too many requests at once from your address: {pending} requests are waiting or running; "
                    "wait for them to finish, then try again")
        return None

    def start(self) -> None:
        """Begin watching (on the server's event loop, at its first request)."""
        if self.reaper is not None:
            return
        self.stop_dead_events()
        if self.settings.abandon_after_s > 0:
            self.reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    def stop_dead_events(self) -> None:
        """Make a running event whose client is gone stop, and say so once.

        Gradio marks such an event dead (``alive = False``) but lets a plain function run to
        the end: a thread cannot be interrupted. Every long bedgen event reports progress
        through ``gr.Progress``, which calls the queue's ``set_progress`` from inside the
        work; raising there ends the work between two steps. A streaming event (Generate
        shows x̂₀ as it forms) may instead be dropped by Gradio at its next yield, which ends
        ``process_events`` without an error; which of the two comes first is a race, so the
        log line is written when ``process_events`` ends, whichever path stopped the work.
        """
        queue = self.queue
        report, process = queue.set_progress, queue.process_events

        def set_progress(event_id: str, iterables: Any) -> None:
            event = next((e for job in queue.active_jobs for e in job or () if e._id == event_id), None)
            if event is not None and not event.alive:
                raise ClientGone("cancelled: the client that sent this request is gone")
            report(event_id, iterables)

        async def process_events(events: list, *args: Any) -> None:
            try:
                await process(events, *args)
            finally:
                for event in events:
                    if not event.alive:
                        _say(f"stopped {event.fn.api_name} from {self.visitor(event.request.scope)}: its client is gone")

        queue.set_progress, queue.process_events = set_progress, process_events

    async def _reap_forever(self) -> None:
        interval = min(1.0, self.settings.abandon_after_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.cancel_unread()
            except Exception as e:  # noqa: BLE001 - the watch must outlive any one bad pass
                _say(f"could not check for abandoned requests: {type(e).__name__}: {e}")

    async def cancel_unread(self) -> None:
        """Cancel events older than ``abandon_after_s`` whose result stream nobody has open."""
        from gradio.server_messages import ProcessCompletedMessage

        grace = self.settings.abandon_after_s
        now = time.monotonic()
        for event in list(self.live_events()):
            if now - event.enqueue_time < grace or self.readers[event.session_hash] or self.readers[event._id]:
                continue
            await self.queue.clean_events(event_id=event._id)  # dequeued if waiting, marked dead if running
            reason = (f"cancelled: nobody read this request's result within {grace} s "
                      "(open the result stream right after sending the request)")
            message = ProcessCompletedMessage(output={"error": reason}, success=False, title="Cancelled")
            message.event_id = event._id
            messages = self.queue.pending_messages_per_session.get(event.session_hash)
            if messages is not None:
                messages.put_nowait(message)  # a late reader learns why
            _say(f"cancelled {event.fn.api_name} from {self.visitor(event.request.scope)}: "
                 f"nobody read its result within {grace} s")

    def stream_key(self, scope: dict) -> str | None:
        """The session hash or event id whose results this request streams, if it does."""
        match = RESULT_STREAMS.match(scope["path"])
        if match is None or scope["method"] != "GET":
            return None
        if match.group("event_id"):
            return match.group("event_id")
        hashes = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash")
        return hashes[0] if hashes else None


# --- the middleware -----------------------------------------------------------------------------


class Guard:
    """ASGI middleware: hosts, login throttle, per-visitor queue admission, result readers."""

    def __init__(self, app: Any, settings: GuardSettings, blocks: "gr.Blocks"):
        self.app, self.settings = app, settings
        self.login = LoginThrottle(settings.login_lockout_s) if settings.login else None
        self.work = WorkWatch(blocks, settings)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.settings.public and (reason := host_refusal(scope, self.settings.allowed_hosts)):
            await _refuse(scope, send, 403, reason)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.work.start()
        path, method = scope["path"], scope["method"]
        if self.login is not None and method == "POST" and path in LOGIN:
            await self._login(scope, receive, send)
        elif method == "POST" and QUEUE_POSTS.match(path):
            await self._admit(scope, receive, send)
        elif (key := self.work.stream_key(scope)) is not None:
            with _counted(self.work.readers, key):
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _login(self, scope: dict, receive: Any, send: Any) -> None:
        who = self.work.visitor(scope)
        if reason := self.login.refusal(who):
            await _refuse(scope, send, 429, reason)
            return

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] in (200, 400):
                self.login.record(who, success=message["status"] == 200)  # 400: wrong user or password
            await send(message)

        await self.app(scope, receive, watch)

    async def _admit(self, scope: dict, receive: Any, send: Any) -> None:
        who = self.work.visitor(scope)
        if reason := self.work.refusal(who):
            await _refuse(scope, send, 429, reason)
            return
        with _counted(self.work.admitting, who):  # counted until the event is in the queue
            await self.app(scope, receive, send)


@contextlib.contextmanager
def _counted(counter: Counter, key: Any) -> Iterator[None]:
    """``counter[key]`` is one higher while the block runs; a key back at zero is removed, so
    the counter holds only visitors (or streams) with something in flight."""
    counter[key] += 1
    try:
        yield
    finally:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]


async def _refuse(scope: dict, send: Any, status: int, reason: str) -> None:
    """Answer with ``status`` and a one-line reason (JSON ``detail`` for the API, as Gradio does)."""
    from starlette.responses import JSONResponse, PlainTextResponse

    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})
        return
    if scope["path"].startswith(API):
        response = JSONResponse({"detail": reason}, status_code=status)
    else:
        response = PlainTextResponse(f"bedgen: {reason}", status_code=status)

    async def no_body() -> dict:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def middleware(settings: GuardSettings, blocks: "gr.Blocks") -> Any:
    """The guard as a Starlette middleware entry, for ``launch(app_kwargs={"middleware": [...]})``."""
    from starlette.middleware import Middleware

    return Middleware(Guard, settings=settings, blocks=blocks)
