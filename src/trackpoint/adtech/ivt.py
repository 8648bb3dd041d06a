"""Invalid traffic: the signs that a request was not made by a person looking at an ad, and the flags they give.

`automated(ua)` spots crawlers, HTTP tools and headless browsers by their User-Agent; `prefetch(value)` reads the
headers browsers send when they fetch a page (or link) speculatively.
"""

from __future__ import annotations

from trackpoint.event import Event, derived_id

# The flag an event carries (dims.ivt) and its values; the first finding wins.
IVT_DIM = "ivt"
BOT = "bot"
PREFETCH = "prefetch"
TOO_FAST = "too_fast"
DATACENTER = "datacenter"  # from a cloud or hosting network (the geo preprocessor's ASN lookup)
FLAGS = (BOT, PREFETCH, TOO_FAST, DATACENTER)


def flag(event: Event, finding: str) -> None:
    """Flags the event (`dims.ivt`) and gives it an id of its own: a scanner's hit on a click URL must not share its
    id with the person's click that follows, which a consumer's dedupe would then drop as a repeat of the flagged
    one. Repeats of a flagged hit still share one id."""
    event.dims[IVT_DIM] = finding
    event.id = derived_id(event.type, [event.id, IVT_DIM])


# Lower-case fragments of User-Agents that no person's browser sends. ua-parser already reports most crawlers as the
# device `Spider`; these cover HTTP libraries and command-line tools, headless and automated browsers, and the
# crawler families it misses, so the check also stands alone (without parse_user_agent).
AUTOMATION_TOKENS = (
    # command-line tools and HTTP libraries
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "go-http-client",
    "okhttp",
    "axios/",
    "node-fetch",
    "undici",
    "apache-httpclient",
    "java/",
    "libwww-perl",
    "lwp::",
    "httpie/",
    "postmanruntime",
    "insomnia/",
    "guzzlehttp",
    "ruby/",
    "scrapy",
    "zgrab",
    "masscan",
    # headless and automated browsers, page auditors
    "headlesschrome",
    "phantomjs",
    "slimerjs",
    "puppeteer",
    "playwright",
    "selenium",
    "webdriver",
    "lighthouse",
    "pagespeed",
    "gtmetrix",
    # crawlers, link previewers and monitors
    "googlebot",
    "adsbot-google",
    "mediapartners-google",
    "google-inspectiontool",
    "bingbot",
    "bingpreview",
    "slurp",
    "duckduckbot",
    "baiduspider",
    "yandexbot",
    "exabot",
    "facebookexternalhit",
    "facebot",
    "ia_archiver",
    "applebot",
    "petalbot",
    "bytespider",
    "gptbot",
    "ccbot",
    "claudebot",
    "perplexitybot",
    "twitterbot",
    "linkedinbot",
    "slackbot",
    "discordbot",
    "telegrambot",
    "whatsapp",
    "skypeuripreview",
    "embedly",
    "pingdom",
    "uptimerobot",
    "statuscake",
    "crawler",
    "spider",
    # the generic crawler forms `FooBot/1.0` and `(compatible; Foo; +http://foo.test/about)`; not `bot;` or `bot)`,
    # which phone models named `...bot` (Cubot) would match
    "bot/",
    "+http",
)
_PREFETCH_WORDS = ("prefetch", "prerender", "preview")


def automated(ua: str) -> bool:
    """Whether a User-Agent names a crawler, a tool or a headless browser (an empty one names nothing: callers that
    care treat a missing User-Agent themselves). A few microseconds: callers cache the answer per string."""
    lowered = ua.lower()
    return any(token in lowered for token in AUTOMATION_TOKENS)


def prefetch(value: str) -> bool:
    """Whether a `Purpose`, `Sec-Purpose`, `X-Moz` or `X-Purpose` header value marks a speculative fetch
    (`prefetch`, `prefetch;prerender`, `preview`)."""
    lowered = value.lower()
    return any(word in lowered for word in _PREFETCH_WORDS)
