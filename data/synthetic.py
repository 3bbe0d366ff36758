"""A seeded synthetic shop whose shoppers have planted tastes, with the cause of every event kept as ground truth."""

from __future__ import annotations

import math
import os
from array import array
from bisect import bisect_right
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, pairwise

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import Dataset, iso_strings, line_locator, make_dataset, normalise_events, normalise_items

WINDOW_START = pd.Timestamp("2024-01-01", tz="UTC")
WINDOW_END = pd.Timestamp("2024-05-01", tz="UTC")  # exclusive: January to April 2024
EVENT_KEY = ("user_id", "item_id", "timestamp", "event")  # unique in Dataset.events once duplicates are set aside
EVENTS = ("view", "cart", "purchase", "rating")
CAUSES = ("brand", "attribute", "category", "price", "recency", "popularity", "noise")
TASTE_CAUSES = ("brand", "attribute", "category", "price")  # the causes that come from a shopper's planted tastes
TIERS = ("budget", "mid", "premium")


@dataclass(frozen=True)
class CategoryVocabulary:
    """The words one category of the shop is written in."""

    name: str  # single word, so it doubles as a token the text encoder sees after "Category:"
    base_price: float  # mid-tier price of a noun whose factor is 1.0
    nouns: dict[str, float]  # product noun -> price factor within the category
    attributes: tuple[str, ...]  # materials, features and styles; several are shared with other categories
    brands: dict[str, str]  # made-up brand -> price tier; one word each so it survives tokenisation whole
    blurbs: tuple[str, ...]  # description sentences about the category, not about any taste


CATEGORIES = (
    CategoryVocabulary(
        "Outdoor", 60.0,
        {"hiking sock": 0.3, "rain jacket": 2.2, "hiking boot": 2.5, "daypack": 1.4, "sleeping bag": 2.0,
         "trekking pole": 0.9, "tent": 3.5},
        ("waterproof", "merino", "breathable", "insulated", "lightweight", "ripstop", "windproof", "packable"),
        {"Nordvik": "premium", "Alpenkamm": "premium", "Trailhex": "mid", "Fjellbu": "mid", "Campora": "budget"},
        ("Made for long days on the trail.", "Tested in wind, rain and snow."),
    ),
    CategoryVocabulary(
        "Kitchen", 45.0,
        {"skillet": 1.0, "chef knife": 1.2, "saucepan": 1.0, "kettle": 0.8, "cutting board": 0.5, "dutch oven": 2.2},
        ("nonstick", "castiron", "stainless", "ceramic", "induction", "copper", "enamelled", "forged"),
        {"Ferroluxe": "premium", "Panterra": "mid", "Kochwerk": "mid", "Sizzly": "budget", "Hearthly": "budget"},
        ("Ready for everyday cooking.", "Heats evenly and cleans up fast."),
    ),
    CategoryVocabulary(
        "Audio", 90.0,
        {"headphones": 1.6, "earbuds": 1.0, "speaker": 0.9, "soundbar": 2.5, "turntable": 2.8},
        ("wireless", "studio", "portable", "hifi", "foldable", "lossless", "waterproof", "retro"),
        {"Sonvero": "premium", "Aurelon": "premium", "Tonhaus": "mid", "Klangbox": "mid", "Echolite": "budget"},
        ("Clear highs and a deep low end.", "Pairs in seconds with phone or laptop."),
    ),
    CategoryVocabulary(
        "Running", 50.0,
        {"running shoe": 2.2, "running shorts": 0.7, "running tee": 0.6, "running vest": 1.2, "running cap": 0.5},
        ("cushioned", "reflective", "trail", "carbon", "seamless", "wicking", "lightweight", "stability"),
        {"Velocor": "premium", "Stridewell": "mid", "Zephyra": "mid", "Kipfast": "budget", "Paceon": "budget"},
        ("Built for race day and every easy mile.", "Keeps you moving from warm-up to finish."),
    ),
    CategoryVocabulary(
        "Bedding", 55.0,
        {"duvet cover": 1.2, "pillow": 0.6, "fitted sheet": 0.7, "throw": 0.9, "quilt": 1.6, "mattress topper": 2.4},
        ("linen", "organic", "bamboo", "hypoallergenic", "percale", "sateen", "cooling", "washable"),
        {"Dunelle": "premium", "Slumbra": "mid", "Quiltara": "mid", "Nappio": "budget", "Hygga": "budget"},
        ("Soft from the first night.", "For deeper, cooler sleep."),
    ),
    CategoryVocabulary(
        "Skincare", 25.0,
        {"face serum": 1.3, "cleanser": 0.7, "moisturiser": 1.0, "toner": 0.7, "sunscreen": 0.8, "eye cream": 1.2},
        ("vegan", "unscented", "retinol", "hyaluronic", "mineral", "niacinamide", "organic", "gentle"),
        {"Lumelle": "premium", "Dermaq": "mid", "Skinthetic": "mid", "Purevo": "budget", "Glowra": "budget"},
        ("Dermatologist tested.", "A daily step for calm, even skin."),
    ),
    CategoryVocabulary(
        "Coffee", 40.0,
        {"coffee beans": 0.4, "burr grinder": 2.0, "espresso machine": 8.0, "pourover kit": 0.8, "milk frother": 0.9,
         "travel mug": 0.5},
        ("arabica", "decaf", "manual", "programmable", "insulated", "barista", "conical", "fairtrade"),
        {"Mokkavel": "premium", "Kaffira": "mid", "Cafello": "mid", "Brewtide": "budget", "Beanory": "budget"},
        ("For a better cup at home.", "From the first grind to the last sip."),
    ),
    CategoryVocabulary(
        "Toys", 30.0,
        {"puzzle": 0.6, "building blocks": 1.0, "plush toy": 0.6, "train set": 1.8, "play kitchen": 3.0,
         "board game": 1.0},
        ("wooden", "educational", "montessori", "recycled", "magnetic", "musical", "stackable", "handmade"),
        {"Holzwerk": "premium", "Kidora": "mid", "Playvane": "mid", "Tumblo": "budget", "Blokkie": "budget"},
        ("Safety tested for ages three and up.", "Hours of open-ended play."),
    ),
    CategoryVocabulary(
        "Stationery", 18.0,
        {"notebook": 1.0, "fountain pen": 2.5, "planner": 1.2, "desk organiser": 1.5, "sketchbook": 1.0,
         "gel pens": 0.6},
        ("dotted", "refillable", "leather", "recycled", "hardcover", "undated", "archival", "pocket"),
        {"Quillory": "premium", "Papyra": "mid", "Notara": "mid", "Scribbo": "budget", "Penrick": "budget"},
        ("Paper that takes ink without bleeding.", "For lists, sketches and big plans."),
    ),
    CategoryVocabulary(
        "Pets", 30.0,
        {"dog collar": 0.6, "dog leash": 0.7, "pet bed": 2.0, "cat tree": 3.0, "food bowl": 0.5, "chew toy": 0.4},
        ("reflective", "orthopedic", "chewproof", "washable", "adjustable", "padded", "elevated", "durable"),
        {"Furrona": "premium", "Pawtrek": "mid", "Houndry": "mid", "Wuffel": "budget", "Kittibo": "budget"},
        ("Loved by dogs and cats alike.", "Made for daily walks and lazy afternoons."),
    ),
    CategoryVocabulary(
        "Garden", 35.0,
        {"garden hose": 1.0, "planter": 0.8, "pruning shears": 0.9, "trowel": 0.4, "watering can": 0.6,
         "raised bed": 3.0},
        ("galvanised", "terracotta", "expandable", "ergonomic", "frostproof", "rustproof", "cedar", "telescopic"),
        {"Gartenhof": "premium", "Verdeo": "mid", "Bloomfeld": "mid", "Sprouta": "budget", "Terrano": "budget"},
        ("Season after season in the garden.", "For balconies, beds and borders."),
    ),
    CategoryVocabulary(
        "Gaming", 60.0,
        {"gaming keyboard": 1.6, "gaming mouse": 0.9, "gaming headset": 1.4, "controller": 1.0, "mousepad": 0.3,
         "gaming chair": 4.5},
        ("mechanical", "rgb", "wireless", "ergonomic", "tenkeyless", "lightweight", "programmable", "silent"),
        {"Raptrix": "premium", "Pixelon": "mid", "Kraggon": "mid", "Voltaro": "budget", "Nexlo": "budget"},
        ("Low latency for competitive play.", "Tuned for long sessions."),
    ),
    CategoryVocabulary(
        "Fitness", 35.0,
        {"yoga mat": 0.8, "dumbbell set": 2.0, "kettlebell": 1.2, "resistance bands": 0.5, "foam roller": 0.6,
         "pullup bar": 0.9},
        ("cork", "nonslip", "adjustable", "cushioned", "castiron", "foldable", "rubber", "compact"),
        {"Ironvale": "premium", "Flexora": "mid", "Kinetra": "mid", "Zenlo": "budget", "Gymbo": "budget"},
        ("A home gym that fits any room.", "For strength, mobility and recovery."),
    ),
)

BRAND_TIER = {brand: tier for c in CATEGORIES for brand, tier in c.brands.items()}
WORD_ORDER = {w: i for i, w in enumerate(dict.fromkeys(w for c in CATEGORIES for w in c.attributes))}
TIER_PRICE = {"budget": 0.6, "mid": 1.0, "premium": 1.8}
TIER_SKUS = {"budget": 1.3, "mid": 1.0, "premium": 0.7}  # budget brands stock more lines
TIER_LEVEL = {"budget": 0.0, "mid": 0.5, "premium": 1.0}  # matched against a shopper's price quantile
TIER_LINES = {
    "budget": "Honest quality at an everyday price.",
    "mid": "A dependable pick for regular use.",
    "premium": "Premium materials, finished by hand and built to last.",
}
# Words shared by every category: they carry no taste, so a text model has to learn to look past them.
SERIES = ("classic", "pro", "essential", "everyday", "signature")
COLOURS = ("black", "white", "navy", "olive", "grey", "sand", "charcoal", "forest")
SHOP_LINES = ("Free returns within 30 days.", "Ships in plastic-free packaging.", "Backed by a two-year warranty.")

# Behaviour. A view's cause is drawn from the shopper's cause mix; whether it goes on to the cart and the
# checkout depends on that cause, so taste-driven views convert and noise mostly does not.
CAUSE_MIX = {"brand": 0.2, "attribute": 0.2, "category": 0.17, "price": 0.1, "recency": 0.1, "popularity": 0.13,
             "noise": 0.1}
CAUSE_MIX_CONCENTRATION = 15.0  # Dirichlet concentration around CAUSE_MIX: shoppers differ, none is pure
SESSION_FOCUS = 0.6  # chance a view follows the session's intent rather than a fresh draw from the mix
P_CART = {"brand": 0.3, "attribute": 0.28, "category": 0.22, "price": 0.3, "recency": 0.34, "popularity": 0.24,
          "noise": 0.15}
P_BUY = {"brand": 0.6, "attribute": 0.6, "category": 0.55, "price": 0.6, "recency": 0.55, "popularity": 0.5,
         "noise": 0.45}
PRICE_FIT = {"below": 0.85, "in": 1.0, "above": 0.35, "unknown": 0.7}  # cart odds by where the price sits
REBUY = 0.2  # cart odds left for an item the shopper already bought
BUY_NOW = 0.06  # a wanted item skips the cart (the buy-now button) and goes straight to checkout
P_RATE = 0.12  # a purchase is rated later
MEAN_EXTRA_VIEWS = 3.0  # a session has 1 + Poisson(3) views
MIN_SESSIONS = 3  # every shopper keeps some history after a last and a second-to-last event are held out
EVENTS_PER_SESSION = 5.38  # measured mean, so `target_events` sets the number of sessions
SESSION_GAP = 30 * 60  # seconds between the end of one session and the start of the next, at least
DAY = 24 * 3600
HOUR_WEIGHTS = np.array([1.0, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.0, 2.2, 2.3, 2.5,
                         2.8, 2.6, 2.4, 2.4, 2.6, 3.0, 3.6, 4.2, 4.5, 4.0, 3.0, 1.8])
BOT_VIEWS = 40  # the bot-like shopper's burst: this many views inside one minute
BEST_SELLER_SHARE = 0.05  # popularity-driven views go to the shop's best-sellers: this top share by appeal
# Price-driven views go to items of any shelf within this log distance (~10%) of the shopper's price point:
# "something around 60 euros", whatever it is.
PRICE_POINT_WIDTH = 0.1


@dataclass(frozen=True)
class Simulation:
    """How `generate` draws the crowd; the shop's model (tastes, causes, odds, dirt) is the same either way."""

    vectorised_from: int = 50_000  # users from which tastes and sessions are drawn as arrays; smaller shops (the
    # demo among them) keep the exact one-shopper-at-a-time draws their fingerprints were taken from
    block_users: int = 65_536  # shoppers simulated together, each block from its own stream: the shop depends on
    # the seed and this, never on how many processes share the blocks
    workers: int | None = None  # processes simulating blocks at once; None: the CPUs this process may use



@dataclass(frozen=True)
class _Pool:
    """Items to draw from with fixed weights; one draw is one binary search.

    Plain lists rather than arrays: a draw is one scalar lookup, where numpy's per-call overhead would dominate.
    """

    items: list[int]
    cumulative: list[float]  # running sum of the weights, the same floats np.cumsum gives

    @classmethod
    def of(cls, items: np.ndarray, weights: np.ndarray) -> _Pool:
        return cls(items.tolist(), np.cumsum(weights).tolist())

    def draw(self, u: float) -> int:
        return self.items[bisect_right(self.cumulative, u * self.cumulative[-1])]


@dataclass(frozen=True)
class _Shelves:
    """What a set of favourite categories stocks: the same for every shopper who favours that set."""

    prices: np.ndarray  # (n,) the known prices on those shelves, sorted
    brand_options: list[str]  # brands stocked there, in catalog order of their first item
    brand_levels: np.ndarray  # (len(brand_options),) TIER_LEVEL of each brand
    attribute_options: list[str]  # attribute words stocked there, in vocabulary order


@dataclass
class _Catalog:
    items: pd.DataFrame  # raw item table, one row per item, in item_id order
    category: np.ndarray  # (n_items,) category name
    brand: np.ndarray  # (n_items,) brand name
    attributes: list[tuple[str, ...]]  # per item, the attribute words in its title
    price: np.ndarray  # (n_items,) float, NaN where the price is missing
    appeal: np.ndarray  # (n_items,) latent popularity
    by_category: dict[str, _Pool]
    by_brand: dict[str, _Pool]
    by_attribute: dict[str, _Pool]
    popular: _Pool  # the best-sellers: the top BEST_SELLER_SHARE of items by appeal, weighted by appeal
    # Plain-list copies for the simulation's scalar lookups (a numpy scalar costs more than the work on it).
    item_ids: list[str] = field(default_factory=list)
    category_of: list[str] = field(default_factory=list)
    price_of: list[float] = field(default_factory=list)
    # Shoppers share what depends only on their favourite categories (at most 377 sets of 1-3 of 13) and on the
    # prices near their price point (shop prices take few distinct values): built once per set, not per shopper.
    _shelves: dict[frozenset, _Shelves] = field(default_factory=dict)
    _price_values: np.ndarray | None = None  # distinct known prices, sorted
    _near_price: dict[bytes, _Pool | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_ids = self.items["item_id"].tolist()
        self.category_of = self.category.tolist()
        self.price_of = self.price.tolist()
        self._price_values = np.unique(self.price[~np.isnan(self.price)])

    def shelves(self, categories: list[str]) -> _Shelves:
        key = frozenset(categories)
        found = self._shelves.get(key)
        if found is None:
            in_favourites = np.isin(self.category, categories)
            brand_options = list(dict.fromkeys(self.brand[in_favourites]))
            stocked = {w for i in np.flatnonzero(in_favourites) for w in self.attributes[i]}
            found = self._shelves[key] = _Shelves(
                prices=np.sort(self.price[in_favourites & ~np.isnan(self.price)]),
                brand_options=brand_options,
                brand_levels=np.array([TIER_LEVEL[BRAND_TIER[b]] for b in brand_options]),
                attribute_options=sorted(stocked, key=WORD_ORDER.__getitem__),  # vocabulary order, not stock order
            )
        return found

    def near_price(self, point: float) -> _Pool | None:
        """Items of any shelf within PRICE_POINT_WIDTH (in log price) of `point`, weighted by sqrt(appeal)."""
        near = np.abs(np.log(self._price_values) - np.log(point)) <= PRICE_POINT_WIDTH  # per distinct price
        key = near.tobytes()
        if key not in self._near_price:
            items = np.flatnonzero(np.isin(self.price, self._price_values[near]))
            self._near_price[key] = _Pool.of(items, np.sqrt(self.appeal[items])) if len(items) else None
        return self._near_price[key]


@dataclass(slots=True)
class _Shopper:
    """One shopper as the simulation reads them, built from `_Crowd` when the simulation reaches them."""

    categories: list[str]
    brands: list[str]
    attributes: list[str]
    drift_start: dict[str, list[float]]  # taste weights on 1 January, aligned with the lists above
    drift_end: dict[str, list[float]]  # and on 30 April; in between they move linearly
    price_band: tuple[float, float]
    price_point: float  # the shopper's own price level on the favourite shelves, inside the band
    activity: float
    at_price_point: _Pool | None  # items of any category within PRICE_POINT_WIDTH of the price point
    cause_cdf: list[float]  # the cumulative cause mix, as Generator.choice builds it from the mix


_FAVOURITE_KINDS = ("categories", "brands", "attributes")


class _Crowd:
    """Every shopper's planted tastes as flat typed columns: `crowd[i]` builds shopper i's `_Shopper` when the
    simulation reaches them, `crowd.taste(i)` their ground-truth record. A million shoppers held as objects would
    take several GB of small lists and floats; as columns they take a few hundred MB."""

    def __init__(self, n_users: int):
        self.width = max(4, len(str(n_users)))  # user ids u0001.., zero-padded so they sort in crowd order
        self.names: dict[str, list[str]] = {kind: [] for kind in _FAVOURITE_KINDS}  # code -> name
        self._codes: dict[str, dict[str, int]] = {kind: {} for kind in _FAVOURITE_KINDS}
        self.favourites = {kind: array("i") for kind in _FAVOURITE_KINDS}  # codes, user after user
        self.ends = {kind: array("q", [0]) for kind in _FAVOURITE_KINDS}  # user i's are [ends[i], ends[i + 1])
        self.drift_start = {kind: array("d") for kind in _FAVOURITE_KINDS}  # aligned with favourites
        self.drift_end = {kind: array("d") for kind in _FAVOURITE_KINDS}
        self.band_low, self.band_high, self.price_point, self.activity = array("d"), array("d"), array("d"), array("d")
        self.cause_mix, self.cause_cdf = array("d"), array("d")  # len(CAUSES) per user
        self.pool = array("i")  # index into pools
        self.pools: list[_Pool | None] = []
        self._pool_codes: dict[int, int] = {}

    def add(self, favourites: dict[str, list[str]], drift_start: dict[str, list[float]],
            drift_end: dict[str, list[float]], price_band: tuple[float, float], price_point: float, activity: float,
            cause_mix: list[float], cause_cdf: list[float], at_price_point: _Pool | None) -> None:
        for kind in _FAVOURITE_KINDS:
            codes = self._codes[kind]
            for name in favourites[kind]:
                if name not in codes:
                    codes[name] = len(self.names[kind])
                    self.names[kind].append(name)
                self.favourites[kind].append(codes[name])
            self.ends[kind].append(len(self.favourites[kind]))
            self.drift_start[kind].extend(drift_start[kind])
            self.drift_end[kind].extend(drift_end[kind])
        self.band_low.append(price_band[0])
        self.band_high.append(price_band[1])
        self.price_point.append(price_point)
        self.activity.append(activity)
        self.cause_mix.extend(cause_mix)
        self.cause_cdf.extend(cause_cdf)
        if id(at_price_point) not in self._pool_codes:  # pools are shared, held by the catalog's cache
            self._pool_codes[id(at_price_point)] = len(self.pools)
            self.pools.append(at_price_point)
        self.pool.append(self._pool_codes[id(at_price_point)])

    def __len__(self) -> int:
        return len(self.activity)

    def user_id(self, i: int) -> str:
        return f"u{i + 1:0{self.width}d}"

    def _listed(self, i: int) -> tuple[dict, dict, dict]:
        names, start, end = {}, {}, {}
        for kind in _FAVOURITE_KINDS:
            a, b = self.ends[kind][i], self.ends[kind][i + 1]
            names[kind] = [self.names[kind][code] for code in self.favourites[kind][a:b]]
            start[kind], end[kind] = self.drift_start[kind][a:b].tolist(), self.drift_end[kind][a:b].tolist()
        return names, start, end

    def __getitem__(self, i: int) -> _Shopper:
        names, start, end = self._listed(i)
        k = len(CAUSES)
        return _Shopper(
            categories=names["categories"], brands=names["brands"], attributes=names["attributes"],
            drift_start=start, drift_end=end, price_band=(self.band_low[i], self.band_high[i]),
            price_point=self.price_point[i], activity=self.activity[i], at_price_point=self.pools[self.pool[i]],
            cause_cdf=self.cause_cdf[k * i:k * (i + 1)].tolist(),
        )

    def taste(self, i: int) -> dict:
        """Shopper i's entry of ground_truth["users"]."""
        names, start, end = self._listed(i)
        k = len(CAUSES)
        return {
            **names,
            "price_band": [self.band_low[i], self.band_high[i]],
            "price_point": self.price_point[i],
            "activity": self.activity[i],
            "cause_mix": {c: round(p, 3) for c, p in zip(CAUSES, self.cause_mix[k * i:k * (i + 1)])},
            "drift": {"start": start, "end": end},
        }


class _Tastes(Mapping):
    """ground_truth["users"] of a generated shop: {user_id: taste record}, each record built when asked for."""

    def __init__(self, crowd: _Crowd):
        self.crowd = crowd

    def __getitem__(self, user_id: str) -> dict:
        number = user_id[1:] if isinstance(user_id, str) and user_id[:1] == "u" else ""
        i = int(number) - 1 if number.isdigit() else -1
        if not 0 <= i < len(self.crowd) or self.crowd.user_id(i) != user_id:
            raise KeyError(user_id)
        return self.crowd.taste(i)

    def __iter__(self):
        return (self.crowd.user_id(i) for i in range(len(self.crowd)))

    def __len__(self) -> int:
        return len(self.crowd)


@dataclass
class _History:
    """What a shopper did lately: recency causes draw from it."""

    last_views: list[int] = field(default_factory=list)  # items viewed in the last session or two, newest first
    abandoned: list[int] = field(default_factory=list)  # carted and not bought, most recent last
    bought: set[int] = field(default_factory=set)
    last_category: str | None = None


def generate(n_users: int = 2000, n_items: int = 1500, seed: int = 0, target_events: int = 60000,
             simulation: Simulation = Simulation()) -> Dataset:
    """A believable shop with planted tastes, as a validated `Dataset` whose `ground_truth` says who likes what.

    Thirteen categories, each with its own nouns, attribute words and five made-up brands (budget, mid, premium).
    Titles read "Brand [series] attribute... noun[, colour]"; prices come from category, noun and brand tier.
    Each shopper has 1-3 favourite categories, 1-2 brands, 2-4 attribute words, a price band around a price point
    and an activity level, and visits in sessions from 1 January to 30 April 2024: every view is drawn by one cause
    from the shopper's cause mix (a taste; an item from any shelf priced within about 10% of the price point; a
    return to what was seen or carted lately; one of the best-sellers; noise), carts and purchases follow it at
    cause-dependent odds, favourites drift in weight over the months. The same seed gives the same shop, byte for
    byte; the catalog depends only on seed and n_items.

    Shops of `simulation.vectorised_from` users or more (50,000 by default) draw their shoppers and sessions as
    arrays, many shoppers per numpy call, in blocks of `simulation.block_users` shoppers that may run in parallel
    processes: the same model (tastes, drift, causes, odds, recency, dirt, ground truth) with other random numbers.
    Such a shop depends on the seed and the block size, not on the number of workers. Smaller shops, the demo
    among them, are drawn one shopper and one event at a time, exactly as they always were; the tastes of a smaller
    crowd are then those of the first shoppers of a larger one.

    `ground_truth` (JSON-serialisable, written as ground_truth.json by `data.io.write_tables`):

    - "seed": the seed; "window": [first, end) of the event clock as ISO strings.
    - "users": a mapping {user_id: {"categories", "brands", "attributes": lists of names/words,
      "price_band": [low, high], "price_point": the price that price-driven views cluster around,
      "activity": relative session rate, "cause_mix": {cause: share of views}, "drift": {"start": {...},
      "end": {...}} with the weight of each favourite on 1 January and on 30 April (linear in between)}}, each
      record built when asked for (a million users are a few arrays until then).
    - "event_causes": a table (columns user_id, item_id, timestamp, event, cause, token), one row per event of
      `dataset.events`, in the same order; `write_tables` writes it as event_causes.<kind>. cause is one of
      CAUSES; token is the brand, attribute word or category name the taste fired on, the id of the past item a
      "recency" view returns to (an abandoned cart or a recent view: the same item, seen before), else None (a
      return to the last visit's shelf too; a missing value in large shops, whose tokens are a categorical like
      every shop's ids: `event_causes` gives plain strings and None either way). Exact
      duplicate events are planted as dirt and set aside by `make_dataset`; they have no row. Each row carries
      its own key (user, item, timestamp, event), which is unique among the kept events, so `event_causes(dataset)`
      joins on the key and survives any re-ordering.
    - "vocabulary": {"brands": {brand: {"category", "tier"}}, "attributes": {category: [words]}}.
    - "dirt": what was planted for the quality report: "duplicate_events" (keys), "items_without_price",
      "bot_users".
    """
    for name, value, minimum in (("n_users", n_users, 1), ("n_items", n_items, len(CATEGORIES)),
                                 ("target_events", target_events, 1), ("seed", seed, 0)):
        if not isinstance(value, int | np.integer) or value < minimum:
            raise DataError(f"must be a whole number ≥ {minimum}", field=name, value=value)
    for name, value in (("block_users", simulation.block_users), ("workers", simulation.workers)):
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise DataError("must be a whole number ≥ 1", field=f"simulation.{name}", value=value)
    # One child stream per stage, so resizing the crowd leaves the catalog as it was.
    catalog_rng, taste_rng, behaviour_rng, dirt_rng = np.random.default_rng(seed).spawn(4)
    catalog = _build_catalog(catalog_rng, n_items)
    if n_users >= simulation.vectorised_from:
        crowd, shoppers = _draw_crowd(taste_rng, n_users, catalog)
        log = _simulate_blocks(behaviour_rng, crowd, shoppers, catalog, target_events, simulation)
        del shoppers
    else:
        crowd = _draw_shoppers(taste_rng, n_users, catalog)
        log = _simulate(behaviour_rng, crowd, catalog, target_events)
    items, log, dirt = _plant_dirt(dirt_rng, catalog, crowd, log)

    # The log's columns become the events and the causes table one by one, each freed once used.
    kept = np.flatnonzero(~log.pop("duplicate"))
    # Ids as categoricals over the crowd and the catalog: a code per event, not a string object per event.
    user_ids = pd.Categorical.from_codes(log.pop("user"), categories=[crowd.user_id(i) for i in range(len(crowd))])
    item_ids = pd.Categorical.from_codes(log.pop("item"), categories=catalog.items["item_id"])
    stamps = pd.DatetimeIndex((WINDOW_START.value + log.pop("time") * 10**9).view("datetime64[ns]"), tz="UTC")
    kinds = pd.Categorical.from_codes(log.pop("event"), categories=EVENTS)
    causes = pd.DataFrame({
        "user_id": user_ids[kept],
        "item_id": item_ids[kept],
        "timestamp": stamps[kept],
        "event": kinds[kept],
        "cause": pd.Categorical.from_codes(log.pop("cause")[kept], categories=CAUSES),
        "token": _tokens(log.pop("token")[kept], catalog),
    })
    raw_events = pd.DataFrame({"user_id": user_ids, "item_id": item_ids, "timestamp": stamps, "event": kinds,
                               "value": log.pop("value")})
    del user_ids, item_ids, stamps, kinds
    events = normalise_events(raw_events, file="synthetic events", locate=line_locator())
    del raw_events
    truth = {
        "seed": int(seed),
        "window": [WINDOW_START.isoformat(), WINDOW_END.isoformat()],
        "users": _Tastes(crowd),
        "event_causes": causes,
        "vocabulary": {
            "brands": {b: {"category": c.name, "tier": t} for c in CATEGORIES for b, t in c.brands.items()},
            "attributes": {c.name: list(c.attributes) for c in CATEGORIES},
        },
        "dirt": dirt,
    }
    return make_dataset(items, events, source="generated", format="synthetic", ground_truth=truth)


def _tokens(tokens: np.ndarray, catalog: _Catalog):
    """The token column of the causes table: the exact path's names (None: no token) as they are, the vectorised
    path's codes as a categorical over `_token_names` (missing: no token)."""
    if tokens.dtype == object:
        return tokens
    return pd.Categorical.from_codes(tokens.astype(np.int64) - 1, categories=_token_names(catalog))


def event_causes(dataset: Dataset) -> pd.DataFrame:
    """The planted cause of each event of `dataset.events`, row for row.

    Columns: user_id, item_id, timestamp, event (as in `dataset.events`), cause (one of CAUSES) and token (the
    brand, attribute word or category name the cause fired on, the past item's id for a recency return to an item,
    None for price, a return to a shelf, popularity and noise).
    Rows are matched on the event key, so a re-ordered or reloaded dataset gets its causes all the same.
    """
    truth = dataset.ground_truth
    if not truth or "event_causes" not in truth:
        raise DataError("this dataset has no planted event causes; only generated data carries them")
    planted = truth["event_causes"]
    if not isinstance(planted, pd.DataFrame):  # a ground_truth.json that still holds the rows as lists
        planted = pd.DataFrame(planted, columns=[*EVENT_KEY, "cause", "token"], dtype=object)
    planted = planted.assign(
        timestamp=pd.to_datetime(planted["timestamp"], utc=True, format="ISO8601").astype("datetime64[ns, UTC]"),
        event=planted["event"].astype(str),
    )
    keys = dataset.events[list(EVENT_KEY)].assign(event=dataset.events["event"].astype(str))
    if _same_rows(keys, planted[list(EVENT_KEY)]):  # as generated: row for row, no join needed
        joined = planted.reset_index(drop=True)
    else:
        try:
            joined = keys.merge(planted, on=list(EVENT_KEY), how="left", validate="many_to_one")
        except pd.errors.MergeError:
            raise DataError("the ground truth lists the same event more than once", field="event_causes") from None
    missing = joined["cause"].isna().to_numpy()
    if missing.any():
        first = joined.iloc[int(np.flatnonzero(missing)[0])]
        raise DataError(
            f"{int(missing.sum())} events have no planted cause, the first: {first.user_id} {first.item_id} "
            f"{first.timestamp.isoformat()} {first.event}",
            field="event_causes",
        )
    out = dataset.events[list(EVENT_KEY)].copy()
    # Plain objects with None for "no token", like the id columns of the contract (not pandas' NaN strings).
    out["cause"] = pd.Series(joined["cause"].astype(object).to_numpy(dtype=object), index=out.index, dtype=object)
    tokens = joined["token"].to_numpy(dtype=object)
    out["token"] = pd.Series(np.where(pd.isna(tokens), None, tokens), index=out.index, dtype=object)
    return out


# ---------------------------------------------------------------------------------------------
# The catalog: category -> brand (tier) -> noun and attribute words -> title, description, price.


def _build_catalog(rng: np.random.Generator, n_items: int) -> _Catalog:
    # Every category gets at least one item; the rest follow uneven shelf sizes.
    shares = rng.dirichlet(np.full(len(CATEGORIES), 10.0))
    sizes = 1 + rng.multinomial(n_items - len(CATEGORIES), shares)
    rows = []
    for vocab, size in zip(CATEGORIES, sizes):
        brands = list(vocab.brands)
        sku_weights = np.array([TIER_SKUS[vocab.brands[b]] for b in brands])
        # Each brand gets one line before any gets two, so small catalogs still show every brand.
        first = rng.permutation(len(brands))[:size]
        rest = rng.choice(len(brands), size=size - len(first), p=sku_weights / sku_weights.sum())
        nouns = list(vocab.nouns)
        for brand_index in np.concatenate([first, rest]):
            brand = brands[brand_index]
            tier = vocab.brands[brand]
            noun = nouns[rng.integers(len(nouns))]
            n_attributes = rng.choice([1, 2, 3], p=[0.3, 0.5, 0.2])
            picked = np.sort(rng.choice(len(vocab.attributes), size=n_attributes, replace=False))
            attributes = tuple(vocab.attributes[i] for i in picked)
            series = SERIES[rng.integers(len(SERIES))] if rng.random() < 0.25 else None
            colour = COLOURS[rng.integers(len(COLOURS))] if rng.random() < 0.4 else None
            raw_price = vocab.base_price * vocab.nouns[noun] * TIER_PRICE[tier] * rng.lognormal(0.0, 0.2)
            title = " ".join(w for w in (brand, series, *attributes, noun) if w) + (f", {colour}" if colour else "")
            description = None
            if rng.random() > 0.04:  # a few items come without a description, as in any shop
                description = " ".join((
                    f"{_article(attributes[0])} {', '.join(attributes)} {noun} from {brand}.",
                    vocab.blurbs[rng.integers(len(vocab.blurbs))],
                    TIER_LINES[tier],
                    SHOP_LINES[rng.integers(len(SHOP_LINES))],
                ))
            rows.append((vocab.name, brand, attributes, title, description, _shop_price(raw_price)))
    order = rng.permutation(len(rows))  # item ids say nothing about the category
    rows = [rows[i] for i in order]
    width = max(4, len(str(n_items)))
    items = pd.DataFrame({
        "item_id": [f"i{n:0{width}d}" for n in range(1, len(rows) + 1)],
        "title": [r[3] for r in rows],
        "category": [r[0] for r in rows],
        "brand": [r[1] for r in rows],
        "description": [r[4] for r in rows],
        "price": np.array([r[5] for r in rows], dtype="float64"),
    })
    category = items["category"].to_numpy()
    brand = items["brand"].to_numpy()
    attributes = [r[2] for r in rows]
    appeal = rng.lognormal(0.0, 0.9, size=len(rows))
    # Tastes pick within a pool by the square root of appeal: a fan of a brand still drifts to its hits.
    taste_weight = np.sqrt(appeal)
    every = np.arange(len(rows))

    def pools(labels) -> dict[str, _Pool]:
        return {label: _Pool.of(every[mask], taste_weight[mask]) for label, mask in labels}

    words = list(dict.fromkeys(w for vocab in CATEGORIES for w in vocab.attributes))
    best_sellers = np.sort(np.argsort(-appeal)[: max(1, round(BEST_SELLER_SHARE * len(rows)))])
    has_word = {w: np.array([w in a for a in attributes]) for w in words}
    return _Catalog(
        items=items,
        category=category,
        brand=brand,
        attributes=attributes,
        price=items["price"].to_numpy(),
        appeal=appeal,
        by_category=pools((c.name, category == c.name) for c in CATEGORIES),
        by_brand=pools((b, brand == b) for c in CATEGORIES for b in c.brands if (brand == b).any()),
        by_attribute=pools((w, has_word[w]) for w in words if has_word[w].any()),
        popular=_Pool.of(best_sellers, appeal[best_sellers]),
    )


def _shop_price(price: float) -> float:
    # Shop prices end in .99 (or 4.99/9.99 past 100), the way shelves are labelled.
    if price < 100:
        return round(max(1.0, round(price)) - 0.01, 2)
    return round(5 * max(1.0, round(price / 5)) - 0.01, 2)


def _article(word: str) -> str:
    return "An" if word[0] in "aeiou" else "A"


# ---------------------------------------------------------------------------------------------
# Shoppers: latent tastes drawn from what the catalog actually stocks.


def _draw_shoppers(rng: np.random.Generator, n_users: int, catalog: _Catalog) -> _Crowd:
    names = [c.name for c in CATEGORIES]
    category_appeal = rng.dirichlet(np.full(len(names), 6.0)).tolist()
    mix = np.array([CAUSE_MIX[c] for c in CAUSES])
    n_categories_cdf = _choice_cdf(np.array([0.35, 0.45, 0.2])).tolist()  # 1, 2 or 3 favourite categories
    cause_alpha = mix * CAUSE_MIX_CONCENTRATION
    crowd, draws = _Crowd(n_users), _ScalarDraws(rng)
    for _ in range(n_users):
        n_categories = 1 + bisect_right(n_categories_cdf, draws.random())
        categories = [names[i] for i in _choice_without_replacement(draws, n_categories, category_appeal)]
        shelves = catalog.shelves(categories)
        # The band is a slice of the favourite shelves' price range around the shopper's own level.
        level = rng.beta(2.0, 2.0)
        low = _quantile_of_sorted(shelves.prices, max(0.0, level - 0.3))
        high = _quantile_of_sorted(shelves.prices, min(1.0, level + 0.3))
        point = _quantile_of_sorted(shelves.prices, level)
        brand_options = shelves.brand_options
        tier_fit = np.exp(-(((shelves.brand_levels - level) / 0.35) ** 2))
        n_brands = min(draws.integers(1, 3), len(brand_options))
        brands = [brand_options[i] for i in _choice_without_replacement(draws, n_brands,
                                                                        (tier_fit / tier_fit.sum()).tolist())]
        attribute_options = shelves.attribute_options
        n_attributes = min(draws.integers(2, 5), len(attribute_options))
        attributes = [attribute_options[i] for i in np.sort(rng.choice(len(attribute_options), n_attributes,
                                                                       replace=False))]
        kinds = (("categories", categories), ("brands", brands), ("attributes", attributes))
        # Per kind of favourite the January weights, then the draw April moves to; last the cause mix.
        sizes = [len(favourites) for _, favourites in kinds for _ in "se"]
        *drawn, cause_mix = _dirichlets(rng, sizes, cause_alpha)
        # Tastes shift, not wholesale: April keeps a third of January's weights. Rounded in one call.
        weights = np.round(np.concatenate([
            *drawn[0::2], *(0.3 * start + 0.7 * later for start, later in zip(drawn[0::2], drawn[1::2])),
            cause_mix]), 3)
        ends = np.cumsum([0, *sizes[0::2], *sizes[0::2], len(mix)])
        rounded = [weights[a:b].tolist() for a, b in pairwise(ends)]
        drift_start = {kind: rounded[k] for k, (kind, _) in enumerate(kinds)}
        drift_end = {kind: rounded[len(kinds) + k] for k, (kind, _) in enumerate(kinds)}
        cause_mix = weights[ends[-2]:]
        cause_mix = cause_mix / cause_mix.sum()
        low, high = round(float(low), 2), round(float(high), 2)
        crowd.add(
            favourites={"categories": categories, "brands": brands, "attributes": attributes},
            drift_start=drift_start,
            drift_end=drift_end,
            price_band=(low, high),
            price_point=round(point, 2),
            activity=round(float(rng.lognormal(0.0, 0.6)), 3),
            cause_mix=cause_mix.tolist(),
            cause_cdf=_choice_cdf(cause_mix).tolist(),
            at_price_point=catalog.near_price(point),
        )
    return crowd


def _choice_cdf(p: np.ndarray) -> np.ndarray:
    """The cumulative table `Generator.choice(..., p=p)` searches: drawing u = rng.random() and taking
    searchsorted(cdf, u, side="right") gives the same index from the same stream, without choice's per-call checks.
    """
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    return cdf


def _choice_without_replacement(draws: _ScalarDraws, size: int, p: list[float]) -> list[int]:
    """rng.choice(len(p), size, replace=False, p=p), drawn the same way from the same stream (numpy's algorithm:
    draw, drop repeats, zero what was found, redraw the rest; the same float operations on plain floats), without
    choice's per-call checks and array overhead."""
    p = list(p)
    found: list[int] = []
    while len(found) < size:
        u = [draws.random() for _ in range(size - len(found))]
        for index in found:
            p[index] = 0.0
        cumulative = list(accumulate(p))
        cdf = [c / cumulative[-1] for c in cumulative]
        new = dict.fromkeys(bisect_right(cdf, x) for x in u)  # first occurrences, in draw order
        found.extend(new)
    return found


def _dirichlets(rng: np.random.Generator, sizes: list[int], last_alpha: np.ndarray) -> list[np.ndarray]:
    """[rng.dirichlet(np.full(k, 2.0)) for k in sizes] + [rng.dirichlet(last_alpha)] (every alpha > 0.1) from one
    gamma draw: numpy draws a Dirichlet as standard gammas scaled by 1 / their running sum, and so does this, in the
    same order and float operations."""
    gammas = rng.standard_gamma(np.concatenate([np.full(sum(sizes), 2.0), last_alpha]))
    out, at = [], 0
    for size in [*sizes, len(last_alpha)]:
        drawn = gammas[at:at + size]
        at += size
        total = 0.0
        for value in drawn.tolist():
            total = total + value
        out.append(drawn * (1 / total))
    return out


def _quantile_of_sorted(values: np.ndarray, q: float) -> float:
    """np.quantile(values, q) (the default "linear" method, same float operations) of already sorted values,
    without the O(n) partition np.quantile does on every call."""
    virtual = (len(values) - 1) * q
    below = min(int(np.floor(virtual)), len(values) - 1)
    above = min(below + 1, len(values) - 1)
    gamma = virtual - below
    a, b = float(values[below]), float(values[above])
    difference = b - a
    return b - difference * (1 - gamma) if gamma >= 0.5 else a + difference * gamma


# ---------------------------------------------------------------------------------------------
# Behaviour: sessions of views, some carted, some bought at checkout, a few rated days later.


class _ScalarDraws:
    """`rng.random()` and `rng.integers(low, high)` one number at a time, read straight from the generator's bit
    stream by numpy's own algorithms (53-bit doubles; Lemire's bounded integers on 32-bit draws): the same numbers
    from the same stream at a quarter of the per-call cost, which dominates when tens of millions are drawn."""

    def __init__(self, rng: np.random.Generator):
        interface = rng.bit_generator.ctypes
        self.random = partial(interface.next_double, interface.state)
        self._next_uint32 = partial(interface.next_uint32, interface.state)

    def integers(self, low: int, high: int) -> int:
        """rng.integers(low, high) for 0 < high - low < 2**32."""
        span = high - low
        product = self._next_uint32() * span
        leftover = product & 0xFFFFFFFF
        if leftover < span:
            threshold = (0xFFFFFFFF - (span - 1)) % span
            while leftover < threshold:
                product = self._next_uint32() * span
                leftover = product & 0xFFFFFFFF
        return low + (product >> 32)


class _Log:
    """The event log as it grows: typed columns (8 bytes or less per value), not lists of Python objects."""

    def __init__(self) -> None:
        self.user, self.item, self.time = array("q"), array("q"), array("q")
        self.event, self.cause = array("b"), array("b")
        self.value = array("d")
        self.token: list[str | None] = []

    def emit(self, user: int, item: int, time: int, event: int, cause: int, token: str | None,
             value: float = np.nan) -> None:
        self.user.append(user)
        self.item.append(item)
        self.time.append(time)
        self.event.append(event)
        self.cause.append(cause)
        self.token.append(token)
        self.value.append(value)

    def columns(self) -> dict:
        columns = {name: np.frombuffer(getattr(self, name), dtype=dtype) if len(getattr(self, name)) else
                   np.empty(0, dtype) for name, dtype in (("user", np.int64), ("item", np.int64), ("time", np.int64),
                                                         ("event", np.int8), ("cause", np.int8), ("value", np.float64))}
        columns["token"] = np.asarray(self.token, dtype=object)
        return columns


_VIEW, _CART, _PURCHASE, _RATING = range(len(EVENTS))
_CAUSE_CODE = {cause: code for code, cause in enumerate(CAUSES)}


def _simulate(rng: np.random.Generator, crowd: _Crowd, catalog: _Catalog, target_events: int) -> dict:
    span = int((WINDOW_END - WINDOW_START).total_seconds())
    total_activity = sum(crowd.activity)
    extra_sessions = max(0.0, target_events / EVENTS_PER_SESSION - MIN_SESSIONS * len(crowd)) / total_activity
    hour_cdf = _choice_cdf(HOUR_WEIGHTS / HOUR_WEIGHTS.sum()).tolist()
    log, draws = _Log(), _ScalarDraws(rng)
    for user in range(len(crowd)):
        shopper = crowd[user]
        n_sessions = MIN_SESSIONS + int(rng.poisson(extra_sessions * shopper.activity))
        # Session starts: n days, then n hours (a choice by HOUR_WEIGHTS), then n seconds into the hour; drawn one
        # by one, the same numbers as numpy's three vector calls at a fraction of their cost for a handful.
        days = [draws.integers(0, span // DAY) * DAY for _ in range(n_sessions)]
        hours = [bisect_right(hour_cdf, draws.random()) * 3600 for _ in range(n_sessions)]
        starts = sorted(day + hour + draws.integers(0, 3600) for day, hour in zip(days, hours))
        history = _History()
        clock = -SESSION_GAP
        for start in starts:
            clock = max(start, clock + SESSION_GAP)  # sessions of one shopper never overlap
            if clock >= span:
                break
            clock = _session(rng, draws, user, shopper, catalog, history, clock, span, log)
    columns = _chronological(log.columns())
    del log
    # A late-night session on 30 April may run past midnight.
    return _reorder(columns, np.flatnonzero(columns["time"] < span))


def _session(rng, draws, user, shopper, catalog, history, clock, span, log) -> int:
    """One visit: views, carts right after their view, a checkout at the end. Returns the clock after it."""
    n_views = 1 + int(rng.poisson(MEAN_EXTRA_VIEWS))
    # One call for the session's uniforms, in the order separate calls would draw them (the same stream): the
    # intent (a choice by the cause mix), whether each view follows it, each view's own cause draw, then three
    # per view.
    uniforms = rng.random(1 + 5 * n_views)
    drawn = uniforms.tolist()
    intent = bisect_right(shopper.cause_cdf, drawn[0])
    causes = [intent if focus < SESSION_FOCUS else bisect_right(shopper.cause_cdf, own)
              for focus, own in zip(drawn[1:1 + n_views], drawn[1 + n_views:1 + 2 * n_views])]
    per_view = uniforms[1 + 2 * n_views:].reshape(n_views, 3).tolist()
    drift = min(1.0, clock / span)
    viewed, carted = [], []
    for cause_index, (u_taste, u_item, u_cart) in zip(causes, per_view):
        item, cause, token = _choose_item(CAUSES[cause_index], shopper, catalog, history, drift, u_taste, u_item)
        code = _CAUSE_CODE[cause]
        log.emit(user, item, clock, _VIEW, code, token)
        viewed.append(item)
        odds = P_CART[cause] * PRICE_FIT[_price_fit(catalog.price_of[item], shopper.price_band)]
        if item in history.bought:
            odds *= REBUY
        if u_cart < odds and all(item != c[0] for c in carted):
            if draws.random() >= BUY_NOW:
                clock += draws.integers(5, 40)
                log.emit(user, item, clock, _CART, code, token)
            carted.append((item, cause, token))
        clock += draws.integers(15, 120)
    if carted:
        clock += draws.integers(60, 400)  # checkout
        for item, cause, token in carted:
            if draws.random() >= P_BUY[cause]:
                history.abandoned = [*history.abandoned[-4:], item]
                continue
            log.emit(user, item, clock, _PURCHASE, _CAUSE_CODE[cause], token)
            history.bought.add(item)
            history.abandoned = [a for a in history.abandoned if a != item]
            if draws.random() < P_RATE:
                rated_at = clock + draws.integers(1, 15) * DAY + draws.integers(0, DAY)
                if rated_at < span:
                    stars = _rating(rng, cause, catalog.price_of[item], shopper)
                    log.emit(user, item, rated_at, _RATING, _CAUSE_CODE[cause], token, stars)
            clock += draws.integers(3, 20)
    history.last_views = [*viewed, *history.last_views][: 2 * len(viewed) + 8]
    history.last_category = catalog.category_of[viewed[-1]]
    return clock


def _choose_item(cause, shopper, catalog, history, drift, u_taste, u_item) -> tuple[int, str, str | None]:
    """The item a view lands on when `cause` drives it, with the cause that really fired and its token.

    Each behaviour cause leaves its own mark, apart from the tastes: price-driven views go to items of any shelf
    priced around the shopper's price point, popularity-driven views go to the shop's best-sellers, and
    recency brings the shopper back to what they saw or carted lately.
    A cause that cannot fire (no history yet, nothing near the price point) hands over to a favourite category.
    """
    if cause == "brand":
        brand = _favourite(shopper, "brands", drift, u_taste)
        return catalog.by_brand[brand].draw(u_item), cause, brand
    if cause == "attribute":
        word = _favourite(shopper, "attributes", drift, u_taste)
        return catalog.by_attribute[word].draw(u_item), cause, word
    if cause == "price" and shopper.at_price_point is not None:
        return shopper.at_price_point.draw(u_item), cause, None
    if cause == "recency":
        # Back to an abandoned cart, to something seen lately, or to the shelf of the last visit.
        # A return names the past item it returns to (its id as the token); a return to a shelf names none.
        if history.abandoned and u_taste < 0.35:
            item = history.abandoned[int(u_item * len(history.abandoned))]
            return item, cause, catalog.item_ids[item]
        if history.last_views and u_taste < 0.75:
            item = history.last_views[int(u_item * len(history.last_views))]
            return item, cause, catalog.item_ids[item]
        if history.last_category is not None:
            return catalog.by_category[history.last_category].draw(u_item), cause, None
    if cause == "popularity":
        return catalog.popular.draw(u_item), cause, None
    if cause == "noise":
        return int(u_item * len(catalog.price_of)), cause, None
    category = _favourite(shopper, "categories", drift, u_taste)
    return catalog.by_category[category].draw(u_item), "category", category


def _favourite(shopper: _Shopper, kind: str, drift: float, u: float) -> str:
    """One favourite of a kind, weighted by where the shopper's taste has drifted to by now (0..1)."""
    weights = list(accumulate((1 - drift) * start + drift * end
                              for start, end in zip(shopper.drift_start[kind], shopper.drift_end[kind])))
    favourites = getattr(shopper, kind)
    return favourites[min(bisect_right(weights, u * weights[-1]), len(favourites) - 1)]


def _price_fit(price: float, band: tuple[float, float]) -> str:
    if math.isnan(price):
        return "unknown"
    return "below" if price < band[0] else "above" if price > band[1] else "in"


def _rating(rng: np.random.Generator, cause: str, price: float, shopper: _Shopper) -> float:
    # Tastes make happy customers; a pricey impulse buy less so.
    stars = 4 if cause in TASTE_CAUSES else 3
    stars += int(rng.choice([-1, 0, 0, 1]))
    if _price_fit(price, shopper.price_band) == "above":
        stars -= 1
    return float(min(5, max(1, stars)))


def _chronological(log: dict) -> dict:
    """The event log sorted by (user, time) as make_dataset sorts it, with no two events of a user at one second.

    Unique times make the order independent of how ties are broken, so the cause rows line up with
    `Dataset.events` by position as well as by key. Reorders `log` in place and returns it.
    """
    order = np.argsort(log["time"], kind="stable")
    order = order[np.argsort(log["user"][order], kind="stable")]
    _reorder(log, order)
    log["time"] = _strictly_increasing(log["user"], log["time"])
    return log


def _reorder(log: dict, index: np.ndarray) -> dict:
    """Every column of `log` taken at `index`, in place and one column at a time: twenty million events are
    never held twice over."""
    for name in list(log):
        log[name] = log[name][index]
    return log


def _strictly_increasing(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Nudge coinciding timestamps of one user (sorted) apart by a second each."""
    if len(times) == 0:
        return times
    starts = np.r_[True, users[1:] != users[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(times)), 0))
    rank = np.arange(len(times)) - group_start
    shifted = times - rank
    # Running maximum within each user: offset every user's values above the previous user's.
    offset = np.cumsum(starts) * (int(shifted.max()) - int(shifted.min()) + 1)
    running = np.maximum.accumulate(shifted + offset) - offset
    return running + rank


# ---------------------------------------------------------------------------------------------
# Large shops: the same shoppers and sessions, drawn as arrays over many shoppers at once.
#
# The exact path above draws one shopper and one event at a time, in the one order that keeps the demo shop byte
# for byte what it was. Past `Simulation.vectorised_from` users the crowd's tastes are drawn for every shopper in
# one go, and the sessions in blocks of shoppers, each block from its own child stream: round k simulates every
# block member's k-th session together, view slot by view slot, with the history (recent views, abandoned carts,
# past purchases) held as arrays. Same odds, same causes, same dirt; other random numbers.


_VOCABULARY = {  # the names a favourite of each kind is coded by, in vocabulary order
    "categories": [c.name for c in CATEGORIES],
    "brands": [b for c in CATEGORIES for b in c.brands],
    "attributes": list(WORD_ORDER),
}
_MOST = {"categories": 3, "brands": 2, "attributes": 4}  # favourites of each kind a shopper has at most
# Token codes: 0 is no token, then category names, brands, attribute words, then the items (returns to an item).
_TOKEN_BASE = {"categories": 1, "brands": 1 + len(CATEGORIES), "attributes": 1 + len(CATEGORIES) + len(BRAND_TIER)}
_ITEM_TOKEN = 1 + len(CATEGORIES) + len(BRAND_TIER) + len(WORD_ORDER)
_TASTE_CODES = [CAUSES.index(c) for c in TASTE_CAUSES]
_BY_CAUSE = {name: np.array([table[c] for c in CAUSES]) for name, table in (("cart", P_CART), ("buy", P_BUY))}


@dataclass(frozen=True)
class _RangePools:
    """Weighted pools that are contiguous runs of one item ordering: pool p is `order[start[p]:end[p]]`, drawn
    with the weights' running sum, so any number of draws from any pools is one binary search over one array."""

    order: np.ndarray  # (n,) item indices
    running: np.ndarray  # (n,) np.cumsum of the weights in that order
    start: np.ndarray  # (n_pools,) where each pool begins in `order`
    end: np.ndarray  # (n_pools,) and ends (exclusive)

    @classmethod
    def grouped(cls, labels: np.ndarray, items: np.ndarray, weights: np.ndarray, n_pools: int) -> _RangePools:
        """Pool p holds the items whose label is p (an item may sit in several pools through repeated rows)."""
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(n_pools + 1))
        return cls(items[order], np.cumsum(weights[order]), bounds[:-1], bounds[1:])

    def draw(self, start: np.ndarray, end: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One item per row from order[start:end] (non-empty), item i with odds weight_i / the range's total."""
        before = np.where(start > 0, self.running[np.maximum(start - 1, 0)], 0.0)
        target = before + u * (self.running[end - 1] - before)
        at = np.clip(np.searchsorted(self.running, target, side="right"), start, end - 1)
        return self.order[at]

    def draw_from(self, pool: np.ndarray, u: np.ndarray) -> np.ndarray:
        return self.draw(self.start[pool], self.end[pool], u)


@dataclass(frozen=True)
class _ShopArrays:
    """The catalog as the block simulation reads it: plain arrays, cheap to send to another process."""

    price: np.ndarray  # (n_items,) NaN where unknown
    category: np.ndarray  # (n_items,) category code
    categories: _RangePools  # by category code, weighted by sqrt(appeal)
    brands: _RangePools  # by brand code
    attributes: _RangePools  # by attribute word code
    by_price: _RangePools  # one pool of every priced item, sorted by price: a price window is a range of it
    popular: _RangePools  # one pool: the best-sellers, weighted by appeal
    extra_sessions: float  # sessions beyond MIN_SESSIONS per unit of activity


def _shop_arrays(catalog: _Catalog, extra_sessions: float) -> _ShopArrays:
    n_items = len(catalog.price)
    every = np.arange(n_items)
    taste = np.sqrt(catalog.appeal)
    code = {kind: {name: i for i, name in enumerate(names)} for kind, names in _VOCABULARY.items()}
    category = np.array([code["categories"][c] for c in catalog.category_of], dtype=np.int16)
    brand = np.array([code["brands"][b] for b in catalog.brand.tolist()], dtype=np.int16)
    word_items = np.repeat(every, [len(a) for a in catalog.attributes])
    words = np.array([code["attributes"][w] for a in catalog.attributes for w in a], dtype=np.int16)
    priced = np.flatnonzero(~np.isnan(catalog.price))
    priced = priced[np.argsort(catalog.price[priced], kind="stable")]
    best = catalog.popular.items
    return _ShopArrays(
        price=catalog.price,
        category=category,
        categories=_RangePools.grouped(category, every, taste, len(CATEGORIES)),
        brands=_RangePools.grouped(brand, every, taste, len(BRAND_TIER)),
        attributes=_RangePools.grouped(words, word_items, taste[word_items], len(WORD_ORDER)),
        by_price=_RangePools(priced, np.cumsum(taste[priced]), np.array([0]), np.array([len(priced)])),
        popular=_RangePools(np.asarray(best), np.cumsum(catalog.appeal[best]), np.array([0]), np.array([len(best)])),
        extra_sessions=extra_sessions,
    )


def _draw_crowd(rng: np.random.Generator, n_users: int, catalog: _Catalog) -> tuple[_Crowd, dict]:
    """Every shopper's tastes at once, as `_draw_shoppers` draws them one by one: the crowd (for the ground truth)
    and the same tastes as padded per-shopper arrays for the simulation."""
    n_categories = len(CATEGORIES)
    category_appeal = rng.dirichlet(np.full(n_categories, 6.0))
    n_favourite = {"categories": 1 + np.searchsorted(_choice_cdf(np.array([0.35, 0.45, 0.2])), rng.random(n_users),
                                                     side="right")}
    # Weighted draws without replacement as exponential races (the first k to finish): in distribution the same
    # as numpy's draw-and-redraw, for every shopper at once.
    race = rng.standard_exponential((n_users, n_categories)) / category_appeal
    favourite = {"categories": np.argsort(race, axis=1)[:, :_MOST["categories"]].astype(np.int16)}
    level = rng.beta(2.0, 2.0, n_users)
    wanted_brands, wanted_words = rng.integers(1, 3, n_users), rng.integers(2, 5, n_users)
    for kind in ("brands", "attributes"):
        favourite[kind] = np.zeros((n_users, _MOST[kind]), dtype=np.int16)
        n_favourite[kind] = np.zeros(n_users, dtype=np.int64)
    low, high, point = np.zeros(n_users), np.zeros(n_users), np.zeros(n_users)
    # Shoppers who favour the same set of categories share its shelves: one group per set (at most 377).
    chosen = np.arange(_MOST["categories"]) < n_favourite["categories"][:, None]
    sets = ((1 << favourite["categories"].astype(np.int64)) * chosen).sum(axis=1)
    by_set = np.argsort(sets, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(sets[by_set]) != 0, True])
    brand_code = {b: i for i, b in enumerate(_VOCABULARY["brands"])}
    for a, b in pairwise(bounds):
        members = by_set[a:b]
        first = members[0]
        shelves = catalog.shelves([_VOCABULARY["categories"][c]
                                   for c in favourite["categories"][first, :n_favourite["categories"][first]]])
        lv = level[members]
        low[members] = np.quantile(shelves.prices, np.maximum(0.0, lv - 0.3))
        high[members] = np.quantile(shelves.prices, np.minimum(1.0, lv + 0.3))
        point[members] = np.quantile(shelves.prices, lv)
        tier_fit = np.exp(-(((shelves.brand_levels[None, :] - lv[:, None]) / 0.35) ** 2))
        race = rng.standard_exponential(tier_fit.shape) / tier_fit
        options = np.array([brand_code[o] for o in shelves.brand_options], dtype=np.int16)
        picked = options[np.argsort(race, axis=1)[:, :_MOST["brands"]]]
        favourite["brands"][members, :picked.shape[1]] = picked
        n_favourite["brands"][members] = np.minimum(wanted_brands[members], len(options))
        options = np.array([WORD_ORDER[w] for w in shelves.attribute_options], dtype=np.int16)
        picked = np.argsort(rng.random((len(members), len(options))), axis=1)[:, :_MOST["attributes"]]
        count = np.minimum(wanted_words[members], len(options))
        picked = np.sort(np.where(np.arange(picked.shape[1]) < count[:, None], picked, len(options)), axis=1)
        favourite["attributes"][members, :picked.shape[1]] = np.append(options, 0)[picked]  # vocabulary order
        n_favourite["attributes"][members] = count
    # Per kind of favourite the January weights and the draw April moves to (Dirichlet(2, ...) as gammas scaled by
    # their sum), April keeping a third of January's; then the cause mix, rounded and made whole again.
    drift_start, drift_end = {}, {}
    for kind in _FAVOURITE_KINDS:
        present = np.arange(_MOST[kind]) < n_favourite[kind][:, None]
        start, later = (np.where(present, rng.standard_gamma(2.0, present.shape), 0.0) for _ in "se")
        start, later = start / start.sum(axis=1, keepdims=True), later / later.sum(axis=1, keepdims=True)
        drift_start[kind], drift_end[kind] = np.round(start, 3), np.round(0.3 * start + 0.7 * later, 3)
    mix = np.array([CAUSE_MIX[c] for c in CAUSES])
    cause_mix = rng.standard_gamma(mix * CAUSE_MIX_CONCENTRATION, (n_users, len(CAUSES)))
    cause_mix = np.round(cause_mix / cause_mix.sum(axis=1, keepdims=True), 3)
    cause_mix /= cause_mix.sum(axis=1, keepdims=True)
    cause_cdf = np.cumsum(cause_mix, axis=1)
    cause_cdf /= cause_cdf[:, -1:]
    activity = np.round(rng.lognormal(0.0, 0.6, n_users), 3)
    # A price window is a run of the priced items sorted by price: items within PRICE_POINT_WIDTH in log price.
    log_prices = np.log(np.sort(catalog.price[~np.isnan(catalog.price)]))
    window = (np.searchsorted(log_prices, np.log(point) - PRICE_POINT_WIDTH, side="left"),
              np.searchsorted(log_prices, np.log(point) + PRICE_POINT_WIDTH, side="right"))

    crowd = _Crowd(n_users)
    crowd.names = {kind: list(names) for kind, names in _VOCABULARY.items()}
    for kind in _FAVOURITE_KINDS:
        present = np.arange(_MOST[kind]) < n_favourite[kind][:, None]
        crowd.favourites[kind] = _typed("i", favourite[kind][present].astype(np.int32))
        crowd.ends[kind] = _typed("q", np.r_[0, np.cumsum(n_favourite[kind])].astype(np.int64))
        crowd.drift_start[kind] = _typed("d", drift_start[kind][present])
        crowd.drift_end[kind] = _typed("d", drift_end[kind][present])
    crowd.band_low, crowd.band_high = _typed("d", np.round(low, 2)), _typed("d", np.round(high, 2))
    crowd.price_point, crowd.activity = _typed("d", np.round(point, 2)), _typed("d", activity)
    crowd.cause_mix, crowd.cause_cdf = _typed("d", cause_mix.ravel()), _typed("d", cause_cdf.ravel())
    shoppers = {
        **{f"favourite_{kind}": favourite[kind] for kind in _FAVOURITE_KINDS},
        **{f"count_{kind}": n_favourite[kind] for kind in _FAVOURITE_KINDS},
        **{f"start_{kind}": drift_start[kind] for kind in _FAVOURITE_KINDS},
        **{f"end_{kind}": drift_end[kind] for kind in _FAVOURITE_KINDS},
        "band_low": np.round(low, 2), "band_high": np.round(high, 2), "cause_cdf": cause_cdf,
        "activity": activity, "window_start": window[0], "window_end": window[1],
    }
    return crowd, shoppers


def _typed(code: str, values: np.ndarray) -> array:
    out = array(code)
    out.frombytes(np.ascontiguousarray(values).tobytes())
    return out


def _simulate_blocks(rng: np.random.Generator, crowd: _Crowd, shoppers: dict, catalog: _Catalog,
                     target_events: int, simulation: Simulation) -> dict:
    """The event log of every block of shoppers, in user order, as `_simulate` returns it but for the tokens:
    codes into `_token_names` (0: no token)."""
    total_activity = float(np.sum(shoppers["activity"]))
    extra = max(0.0, target_events / EVENTS_PER_SESSION - MIN_SESSIONS * len(crowd)) / total_activity
    shop = _shop_arrays(catalog, extra)
    starts = range(0, len(crowd), simulation.block_users)
    seeds = rng.bit_generator.seed_seq.spawn(len(starts))
    tasks = ((seed, first, {name: column[first:first + simulation.block_users] for name, column in shoppers.items()},
              shop) for seed, first in zip(seeds, starts))
    workers = simulation.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
    workers = min(workers, len(starts))
    if workers <= 1:
        blocks = [_simulate_block(task) for task in tasks]
    else:
        with ProcessPoolExecutor(workers) as pool:
            blocks = list(pool.map(_simulate_block, tasks))
    log = {}
    for name in list(blocks[0]):
        log[name] = np.concatenate([block.pop(name) for block in blocks])
    del blocks
    stars = log.pop("stars")
    log["value"] = np.where(stars > 0, stars, np.nan)
    return log


def _token_names(catalog: _Catalog) -> list[str]:
    """What the vectorised path's token codes 1, 2, ... stand for (0 is no token)."""
    return [*_VOCABULARY["categories"], *_VOCABULARY["brands"], *_VOCABULARY["attributes"], *catalog.item_ids]


class _BlockLog:
    """Events as they are drawn, one array per column per step."""

    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in ("user", "item", "time", "event", "cause",
                                                                         "token", "stars")}

    def emit(self, user, item, time, event: int, cause, token, stars=None) -> None:
        n = len(user)
        self.parts["user"].append(np.asarray(user, dtype=np.int64))
        self.parts["item"].append(np.asarray(item, dtype=np.int64))
        self.parts["time"].append(np.asarray(time, dtype=np.int64))
        self.parts["event"].append(np.full(n, event, dtype=np.int8))
        self.parts["cause"].append(np.asarray(cause, dtype=np.int8))
        self.parts["token"].append(np.asarray(token, dtype=np.int32))
        self.parts["stars"].append(np.zeros(n, np.int8) if stars is None else np.asarray(stars, dtype=np.int8))

    def columns(self) -> dict:
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


@dataclass
class _Histories:
    """What every shopper of a block did lately, as arrays (the block-wide form of `_History`)."""

    last_views: np.ndarray  # (m, width) item indices, newest session first; the first `n_last` of a row count
    n_last: np.ndarray
    abandoned: np.ndarray  # (m, 5) carted and not bought, most recent last; the first `n_abandoned` count
    n_abandoned: np.ndarray
    last_category: np.ndarray  # (m,) category code of the last item viewed, -1 before any
    bought: np.ndarray  # sorted keys user * n_items + item of everything bought so far

    @classmethod
    def empty(cls, m: int) -> _Histories:
        return cls(np.zeros((m, 8), np.int64), np.zeros(m, np.int64), np.zeros((m, 5), np.int64),
                   np.zeros(m, np.int64), np.full(m, -1, np.int64), np.zeros(0, np.int64))

    def has_bought(self, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        keys = users * n_items + items
        at = np.minimum(np.searchsorted(self.bought, keys), max(len(self.bought) - 1, 0))
        return (self.bought[at] == keys) if len(self.bought) else np.zeros(len(keys), bool)

    def abandon(self, users: np.ndarray, items: np.ndarray) -> None:
        """[*abandoned[-4:], item] for each (user, item)."""
        full = self.n_abandoned[users] == self.abandoned.shape[1]
        shifted = users[full]
        self.abandoned[shifted, :-1] = self.abandoned[shifted, 1:]
        self.n_abandoned[shifted] -= 1
        self.abandoned[users, self.n_abandoned[users]] = items
        self.n_abandoned[users] += 1

    def forget_abandoned(self, users: np.ndarray, items: np.ndarray) -> None:
        """Bought at last: the item leaves the user's abandoned carts (every copy of it)."""
        rows = self.abandoned[users]
        keep = (rows != items[:, None]) & (np.arange(rows.shape[1]) < self.n_abandoned[users][:, None])
        order = np.argsort(~keep, axis=1, kind="stable")
        self.abandoned[users] = np.take_along_axis(rows, order, axis=1)
        self.n_abandoned[users] = keep.sum(axis=1)

    def remember_views(self, users: np.ndarray, viewed: np.ndarray, n_viewed: np.ndarray) -> None:
        """[*viewed, *last_views][:2 * len(viewed) + 8] for each user of a session round."""
        width = 2 * viewed.shape[1] + 8
        if width > self.last_views.shape[1]:
            grown = np.zeros((len(self.last_views), width), np.int64)
            grown[:, :self.last_views.shape[1]] = self.last_views
            self.last_views = grown
        old, n_old = self.last_views[users], self.n_last[users]
        column = np.arange(self.last_views.shape[1])[None, :]
        from_old = np.clip(column - n_viewed[:, None], 0, old.shape[1] - 1)
        fresh = np.take_along_axis(viewed, np.minimum(column, viewed.shape[1] - 1), axis=1)
        self.last_views[users] = np.where(column < n_viewed[:, None], fresh, np.take_along_axis(old, from_old, axis=1))
        self.n_last[users] = np.minimum(n_viewed + n_old, 2 * n_viewed + 8)


def _simulate_block(task) -> dict:
    """Sessions of one block of shoppers (`_simulate`'s behaviour, many shoppers per numpy call): the block's
    event log sorted by (user, time), users numbered from the block's first."""
    seed, first_user, shoppers, shop = task
    rng = np.random.default_rng(seed)
    span = int((WINDOW_END - WINDOW_START).total_seconds())
    m = len(shoppers["activity"])
    n_sessions = MIN_SESSIONS + rng.poisson(shop.extra_sessions * shoppers["activity"])
    # Session starts: a day, an hour by HOUR_WEIGHTS, a second within it; sorted per shopper.
    owner = np.repeat(np.arange(m), n_sessions)
    hour_cdf = _choice_cdf(HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    starts = (rng.integers(0, span // DAY, len(owner)) * DAY
              + np.searchsorted(hour_cdf, rng.random(len(owner)), side="right") * 3600
              + rng.integers(0, 3600, len(owner)))
    starts = starts[np.lexsort((starts, owner))]
    first_session = np.r_[0, np.cumsum(n_sessions)[:-1]]
    clock = np.full(m, -SESSION_GAP, dtype=np.int64)
    active = np.ones(m, dtype=bool)
    history, log = _Histories.empty(m), _BlockLog()
    for k in range(int(n_sessions.max())):
        users = np.flatnonzero(active & (n_sessions > k))
        session_clock = np.maximum(starts[first_session[users] + k], clock[users] + SESSION_GAP)
        over = session_clock >= span  # sessions of one shopper never overlap; the window closes on them
        active[users[over]] = False
        users, session_clock = users[~over], session_clock[~over]
        if len(users) == 0:
            break
        clock[users] = _session_round(rng, users, session_clock, shoppers, shop, history, span, log)
    columns = log.columns()
    del log
    columns = _chronological(columns)
    columns["user"] += first_user
    return _reorder(columns, np.flatnonzero(columns["time"] < span))


def _session_round(rng, users, clock, shoppers, shop, history, span, log) -> np.ndarray:
    """One session for each of `users` (all starting at `clock`), as `_session` plays one. Returns the clocks."""
    s = len(users)
    n_items = len(shop.price)
    n_views = 1 + rng.poisson(MEAN_EXTRA_VIEWS, s)
    cause_cdf = shoppers["cause_cdf"][users]
    intent = _search_rows(cause_cdf, rng.random(s))
    drift = np.minimum(1.0, clock / span)
    most = int(n_views.max())
    viewed = np.zeros((s, most), np.int64)
    carted = {name: np.full((s, most), -1, np.int64) for name in ("item", "cause", "token")}
    n_carted = np.zeros(s, np.int64)
    bought_before = history.bought  # purchases land at checkout, after every view of the session
    for slot in range(most):
        rows = np.flatnonzero(n_views > slot)
        who = users[rows]
        u = rng.random((len(rows), 5))  # follows the intent?, own cause, taste, item, cart
        cause = np.where(u[:, 0] < SESSION_FOCUS, intent[rows], _search_rows(cause_cdf[rows], u[:, 1]))
        item, cause, token = _choose_items(cause, who, drift[rows], u[:, 2], u[:, 3], shoppers, shop, history)
        log.emit(who, item, clock[rows], _VIEW, cause, token)
        viewed[rows, slot] = item
        odds = _BY_CAUSE["cart"][cause] * _price_fit_odds(shop.price[item], shoppers["band_low"][who],
                                                          shoppers["band_high"][who])
        if len(bought_before):
            odds = np.where(history.has_bought(who, item, n_items), odds * REBUY, odds)
        fresh = ~(carted["item"][rows] == item[:, None]).any(axis=1)
        cart = np.flatnonzero((u[:, 4] < odds) & fresh)
        rows_cart = rows[cart]
        to_cart = rng.random(len(cart)) >= BUY_NOW
        delay = rng.integers(5, 40, len(cart))
        waited = rows_cart[to_cart]
        clock[waited] += delay[to_cart]
        log.emit(users[waited], item[cart][to_cart], clock[waited], _CART, cause[cart][to_cart],
                 token[cart][to_cart])
        for name, values in (("item", item), ("cause", cause), ("token", token)):
            carted[name][rows_cart, n_carted[rows_cart]] = values[cart]
        n_carted[rows_cart] += 1
        clock[rows] += rng.integers(15, 120, len(rows))
    checking_out = np.flatnonzero(n_carted > 0)
    clock[checking_out] += rng.integers(60, 400, len(checking_out))
    bought = []
    for slot in range(int(n_carted.max())):
        rows = np.flatnonzero(n_carted > slot)
        who, item = users[rows], carted["item"][rows, slot]
        cause, token = carted["cause"][rows, slot], carted["token"][rows, slot]
        buys = rng.random(len(rows)) < _BY_CAUSE["buy"][cause]
        history.abandon(who[~buys], item[~buys])
        rows, who, item, cause, token = rows[buys], who[buys], item[buys], cause[buys], token[buys]
        log.emit(who, item, clock[rows], _PURCHASE, cause, token)
        bought.append(who * n_items + item)
        history.forget_abandoned(who, item)
        rated = np.flatnonzero(rng.random(len(rows)) < P_RATE)
        rated_at = clock[rows[rated]] + rng.integers(1, 15, len(rated)) * DAY + rng.integers(0, DAY, len(rated))
        # Tastes make happy customers; a pricey impulse buy less so.
        stars = (np.where(np.isin(cause[rated], _TASTE_CODES), 4, 3) + rng.choice([-1, 0, 0, 1], len(rated))
                 - (shop.price[item[rated]] > shoppers["band_high"][who[rated]]))
        kept = rated_at < span
        log.emit(who[rated][kept], item[rated][kept], rated_at[kept], _RATING, cause[rated][kept],
                 token[rated][kept], np.clip(stars[kept], 1, 5))
        clock[rows] += rng.integers(3, 20, len(rows))
    if bought:
        history.bought = np.union1d(history.bought, np.concatenate(bought))
    history.remember_views(users, viewed, n_views)
    history.last_category[users] = shop.category[viewed[np.arange(s), n_views - 1]]
    return clock


def _search_rows(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """bisect_right(cdf[i], u[i]) for every row: the draw `_Pool`/`Generator.choice` makes, one per row."""
    return np.minimum((cdf <= u[:, None]).sum(axis=1), cdf.shape[1] - 1)


def _price_fit_odds(price: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """PRICE_FIT by where each price sits in its shopper's band (`_price_fit` for arrays)."""
    fit = np.where(price < low, PRICE_FIT["below"], np.where(price > high, PRICE_FIT["above"], PRICE_FIT["in"]))
    return np.where(np.isnan(price), PRICE_FIT["unknown"], fit)


def _choose_items(cause, who, drift, u_taste, u_item, shoppers, shop, history):
    """`_choose_item` for many views at once: the items, the causes that really fired and their token codes."""
    brand, attribute, category, price, recency, popularity, noise = range(len(CAUSES))
    cause = cause.copy()
    # A cause that cannot fire hands over to a favourite category, as in `_choose_item`.
    window_start, window_end = shoppers["window_start"][who], shoppers["window_end"][who]
    cause[(cause == price) & (window_end <= window_start)] = category
    recent = cause == recency
    to_abandoned = recent & (history.n_abandoned[who] > 0) & (u_taste < 0.35)
    to_viewed = recent & ~to_abandoned & (history.n_last[who] > 0) & (u_taste < 0.75)
    to_shelf = recent & ~to_abandoned & ~to_viewed & (history.last_category[who] >= 0)
    cause[recent & ~(to_abandoned | to_viewed | to_shelf)] = category
    item = np.zeros(len(cause), np.int64)
    token = np.zeros(len(cause), np.int64)
    for code, kind, pools in ((brand, "brands", shop.brands), (attribute, "attributes", shop.attributes),
                              (category, "categories", shop.categories)):
        rows = np.flatnonzero(cause == code)
        favourite = _favourites(shoppers, kind, who[rows], drift[rows], u_taste[rows])
        item[rows] = pools.draw_from(favourite, u_item[rows])
        token[rows] = _TOKEN_BASE[kind] + favourite
    rows = np.flatnonzero(cause == price)
    item[rows] = shop.by_price.draw(window_start[rows], window_end[rows], u_item[rows])
    for rows, past, count in ((np.flatnonzero(to_abandoned), history.abandoned, history.n_abandoned),
                              (np.flatnonzero(to_viewed), history.last_views, history.n_last)):
        returned = past[who[rows], (u_item[rows] * count[who[rows]]).astype(np.int64)]
        item[rows], token[rows] = returned, _ITEM_TOKEN + returned
    rows = np.flatnonzero(to_shelf)
    item[rows] = shop.categories.draw_from(history.last_category[who[rows]], u_item[rows])
    rows = np.flatnonzero(cause == popularity)
    item[rows] = shop.popular.draw_from(np.zeros(len(rows), np.int64), u_item[rows])
    rows = np.flatnonzero(cause == noise)
    item[rows] = (u_item[rows] * len(shop.price)).astype(np.int64)
    return item, cause, token


def _favourites(shoppers: dict, kind: str, who: np.ndarray, drift: np.ndarray, u: np.ndarray) -> np.ndarray:
    """`_favourite` for many shoppers at once: a favourite's code, weighted by where each one's taste has drifted."""
    weights = np.cumsum((1 - drift[:, None]) * shoppers[f"start_{kind}"][who]
                        + drift[:, None] * shoppers[f"end_{kind}"][who], axis=1)
    picked = (weights <= (u * weights[:, -1])[:, None]).sum(axis=1)
    picked = np.minimum(picked, shoppers[f"count_{kind}"][who] - 1)
    return shoppers[f"favourite_{kind}"][who, picked].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Dirt for the quality report: small, planted on purpose, and listed in the ground truth.


def _plant_dirt(rng, catalog, crowd, log) -> tuple[pd.DataFrame, dict, dict]:
    span = int((WINDOW_END - WINDOW_START).total_seconds())
    items = catalog.items.copy()
    unpriced = np.sort(rng.choice(len(items), size=2, replace=False))
    items.loc[unpriced, "price"] = np.nan
    items = normalise_items(items, file="synthetic items", locate=line_locator())

    # A scraper-like account: a burst of views, one every second or so, at three in the morning.
    bot = int(rng.integers(len(crowd)))
    burst_start = int(rng.integers(0, span // DAY - 1)) * DAY + 3 * 3600 + int(rng.integers(0, 3000))
    burst_times = burst_start + np.sort(rng.choice(60, BOT_VIEWS, replace=False))
    burst = {
        "user": np.full(BOT_VIEWS, bot),
        "item": rng.integers(len(items), size=BOT_VIEWS),
        "time": burst_times,
        "event": np.full(BOT_VIEWS, EVENTS.index("view"), dtype=np.int8),
        "cause": np.full(BOT_VIEWS, CAUSES.index("noise"), dtype=np.int8),
        "token": np.full(BOT_VIEWS, None, dtype=object) if log["token"].dtype == object else  # no token, or
        np.zeros(BOT_VIEWS, dtype=log["token"].dtype),  # its code where the vectorised path holds tokens as codes
        "value": np.full(BOT_VIEWS, np.nan),
    }
    # The log is in (user, time) order: only the bot's own rows take the burst in and are put in order again.
    first, last = np.searchsorted(log["user"], [bot, bot + 1])
    own = _chronological({name: np.concatenate([log[name][first:last], burst[name]]) for name in log})
    for name in list(log):
        log[name] = np.concatenate([log[name][:first], own[name], log[name][last:]])

    # Two events sent twice: each copy sits right after its original, where make_dataset sets it aside.
    views = np.flatnonzero(log["event"] == EVENTS.index("view"))
    copied = np.sort(rng.choice(views, size=min(2, len(views)), replace=False))
    positions = np.sort(np.r_[np.arange(len(log["time"])), copied])
    _reorder(log, positions)
    log["duplicate"] = np.r_[False, positions[1:] == positions[:-1]]
    copies = np.flatnonzero(log["duplicate"])
    duplicate_keys = [
        [crowd.user_id(user), items["item_id"].iloc[item], stamp, "view"]
        for user, item, stamp in zip(log["user"][copies], log["item"][copies], _iso(log["time"][copies]))
    ]
    dirt = {
        "duplicate_events": duplicate_keys,
        "items_without_price": items["item_id"].iloc[unpriced].tolist(),
        "bot_users": [crowd.user_id(bot)],
    }
    return items, log, dirt


def _iso(seconds: np.ndarray) -> np.ndarray:
    """Seconds since the window start as the ISO strings `pd.Timestamp.isoformat` writes for UTC."""
    return iso_strings(pd.to_datetime(WINDOW_START.value + seconds * 10**9, utc=True))


def _same_rows(left: pd.DataFrame, right: pd.DataFrame) -> bool:
    """True when two key tables hold the same rows in the same order (the columns compared as values)."""
    if len(left) != len(right):
        return False
    return all(np.array_equal(left[c].to_numpy(dtype=object), right[c].to_numpy(dtype=object)) for c in left)
