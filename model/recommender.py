"""The recommender network, its whole forward pass in one file, with the config that builds it.

score(context, item) = ⟨context, text_vector(item)⟩          item text, through the encoder   ("text")
                     + ⟨context, id_vector(item)⟩ + bias(item) collaborative memory of the item ("collaborative")
                     + behaviour_head(features(user, item, t)) point-in-time behaviour         ("behaviour")
context = scale(user_state(history) + query_vector(query)), either part optional.

With a temperature τ > 0 the dot product is a cosine: item vectors are divided by the norm of
(text + id) and the context is unit length divided by τ. Text vectors of a frozen encoder and fresh ID
vectors live on different scales; the cosine keeps either from drowning the other and trains faster.

The top is additive on purpose: every score splits exactly into these parts, which the explainers
then break down further (tokens by Integrated Gradients, features by SHAP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from data.schema import EVENT_TYPES
from model.encoder import TextEncoder
from model.errors import ModelError

ENCODER_TUNINGS = ("frozen", "lora", "full")
N_GAP_BUCKETS = 24  # log2 buckets of minutes between events: 1 min .. ~16 years


@dataclass(frozen=True)
class RecommenderConfig:
    n_items: int  # catalog size: the ID table has one row per item, plus row 0 for padding
    n_features: int  # behaviour features (data.features.FEATURES) the head reads
    text_dim: int = 384  # hidden size of the base encoder (all-MiniLM-L6-v2: 384)
    dim: int = 128  # width of item vectors and of the user state; 64-256 measured alike, 128 is the knee
    max_history: int = 50  # history items the user state reads; the UniSRec files keep 50
    n_layers: int = 2  # causal transformer blocks over the history (SASRec uses 2)
    n_heads: int = 2
    dropout: float = 0.2  # histories are short and catalogs sparse: dropout matters more than depth
    use_id_embedding: bool = True  # the collaborative part; off gives a pure text model (cold-start catalogs)
    feature_hidden: int = 32  # the behaviour head is small on purpose: few features, SHAP-exact
    behaviour_heads: int = 1  # the head is the mean of this many such MLPs, each fitted on other users (stage 2)
    max_item_tokens: int = 64  # item text truncated here: titles + brand + category fit
    max_query_tokens: int = 64  # longer queries are truncated and flagged
    encoder_tuning: str = "frozen"  # frozen | lora | full; default per device is in the README
    lora_rank: int = 8
    temperature: float = 0.07  # cosine scores / τ; 0 turns the plain dot product back on (UniSRec uses 0.07)
    lexical_text: bool = False  # a bag-of-words channel beside the encoder: item names it reads as noise (README)

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ModelError(f"config.n_items {self.n_items} must be at least 1")
        if self.behaviour_heads < 1:
            raise ModelError(f"config.behaviour_heads {self.behaviour_heads} must be at least 1")
        if self.dim % self.n_heads:
            raise ModelError(f"config.n_heads {self.n_heads} must divide config.dim {self.dim}")
        if self.encoder_tuning not in ENCODER_TUNINGS:
            choices = ", ".join(ENCODER_TUNINGS)
            raise ModelError(f"config.encoder_tuning '{self.encoder_tuning}' is not one of {choices}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RecommenderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"unknown RecommenderConfig keys: {', '.join(unknown)}")
        return cls(**values)


def new_behaviour_head(n_features: int, hidden: int) -> nn.Sequential:
    """features -> hidden (GELU) -> 1, starting neutral (output 0): stage 2 learns what behaviour adds."""
    head = nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, 1))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


def event_code(event: str) -> int:
    """0 is padding; view, cart, purchase, rating are 1..4."""
    return EVENT_TYPES.index(event) + 1


def gap_bucket(minutes: torch.Tensor) -> torch.Tensor:
    """log2 bucket of a time gap in minutes, 1..N_GAP_BUCKETS (0 stays padding)."""
    return (torch.log2(1 + minutes.clamp(min=0)).floor().long() + 1).clamp(max=N_GAP_BUCKETS)


class RecommenderNet(nn.Module):
    def __init__(self, config: RecommenderConfig, encoder: TextEncoder) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        d = config.dim
        self.item_text_proj = nn.Linear(config.text_dim, d)
        # The lexical channel: the item text's mean input word embedding, projected. A pretrained encoder reads a
        # made-up brand name as little more than noise; a linear map of its word pieces can learn it.
        self.item_lexical_proj = nn.Linear(config.text_dim, d, bias=False) if config.lexical_text else None
        self.item_id = nn.Embedding(config.n_items + 1, d, padding_idx=0)
        self.item_bias = nn.Embedding(config.n_items + 1, 1, padding_idx=0)
        self.query_proj = nn.Linear(config.text_dim, d)
        self.position = nn.Embedding(config.max_history, d)
        self.event_type = nn.Embedding(len(EVENT_TYPES) + 1, d, padding_idx=0)
        self.gap = nn.Embedding(N_GAP_BUCKETS + 1, d, padding_idx=0)
        self.now_gap = nn.Embedding(N_GAP_BUCKETS + 1, d, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d, config.n_heads, 2 * d, config.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(config.dropout)
        # The mean of `behaviour_heads` small MLPs is itself one: their hidden units side by side, the output
        # weights divided by their number. Stage 2 fits them one by one (set_behaviour_heads), so the wide head's
        # start is never used: it is drawn aside, and every other parameter starts as in a one-head model (a
        # seed trains the same stage 1 whatever the number of heads).
        self.behaviour_head = new_behaviour_head(config.n_features, config.feature_hidden)
        if config.behaviour_heads > 1:
            with torch.random.fork_rng(devices=[]):
                self.behaviour_head = new_behaviour_head(config.n_features,
                                                         config.feature_hidden * config.behaviour_heads)
        # Standardisation of the raw features, set from training data; part of the head, saved with it.
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        # Small starts (as BERT's 0.02): the default N(0, 1) would bury the unit-length item vectors
        # under position and event noise, and the model would first have to learn to ignore it.
        for table in (self.item_id, self.position, self.event_type, self.gap, self.now_gap):
            nn.init.normal_(table.weight, std=0.02)
            if table.padding_idx is not None:
                table.weight.data[table.padding_idx].zero_()
        nn.init.zeros_(self.item_bias.weight)
        if not config.use_id_embedding:
            self.item_id.weight.data.zero_()
            self.item_id.weight.requires_grad_(False)

    # ---- items -----------------------------------------------------------------------------

    @property
    def item_text_width(self) -> int:
        """Width of an item's text embedding: the encoder's, and the lexical channel's beside it if there is one."""
        return self.config.text_dim * (2 if self.config.lexical_text else 1)

    def item_text_embedding(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                            inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) item text in -> (B, item_text_width) its embedding, as item_text_vectors reads it."""
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            lexical=self.config.lexical_text)

    def item_text_vectors(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(…, item_text_width) item text embeddings -> (…, D) text part of the item vector."""
        if self.item_lexical_proj is None:
            return self.item_text_proj(text_embeddings)
        encoded, lexical = text_embeddings.split(self.config.text_dim, dim=-1)
        return self.item_text_proj(encoded) + self.item_lexical_proj(self.dropout(lexical))

    def item_id_vectors(self, item_index: torch.Tensor) -> torch.Tensor:
        """(…,) catalog positions (-1 = padding) -> (…, D) collaborative part; zeros without IDs."""
        return self.item_id(item_index + 1)

    def item_biases(self, item_index: torch.Tensor) -> torch.Tensor:
        return self.item_bias(item_index + 1).squeeze(-1)  # (…,)

    def item_parts(self, text_embeddings: torch.Tensor, item_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text and collaborative parts of the item vectors (…, D) each; they sum to the item vector."""
        text, ident = self.item_text_vectors(text_embeddings), self.item_id_vectors(item_index)
        if self.config.temperature > 0:
            norm = (text + ident).norm(dim=-1, keepdim=True).clamp(min=1e-6)
            text, ident = text / norm, ident / norm
        return text, ident

    def item_vectors(self, text_embeddings: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
        text, ident = self.item_parts(text_embeddings, item_index)
        return text + ident  # (…, D)

    def normalised_item_vector(self, item_vector: torch.Tensor) -> torch.Tensor:
        if self.config.temperature > 0:
            return item_vector / item_vector.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return item_vector

    def scaled_context(self, context: torch.Tensor) -> torch.Tensor:
        """(…, D) raw user state + query vector -> the context the items are scored against."""
        if self.config.temperature > 0:
            return nn.functional.normalize(context, dim=-1) / self.config.temperature
        return context

    # ---- users and queries -----------------------------------------------------------------

    def user_states(
        self,
        history_vectors: torch.Tensor,  # (B, T, D) item vectors of the history, right-padded
        event_codes: torch.Tensor,  # (B, T) event_code of each history unit, 0 = padding
        gap_codes: torch.Tensor,  # (B, T) gap_bucket since the previous unit, 0 = padding
        now_codes: torch.Tensor,  # (B, T) gap_bucket from unit t to the moment of prediction after it
    ) -> torch.Tensor:
        """(B, T, D): the user state after each prefix of the history (causal), read by the last real one."""
        T = history_vectors.shape[1]
        positions = torch.arange(T, device=history_vectors.device).clamp(max=self.config.max_history - 1)
        x = history_vectors + self.position(positions) + self.event_type(event_codes) + self.gap(gap_codes)
        x = self.dropout(x)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
        padding = event_codes == 0  # (B, T)
        x = self.blocks(x, mask=causal, src_key_padding_mask=padding, is_causal=False)
        return self.norm(x) + self.now_gap(now_codes)  # (B, T, D)

    def last_state(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, D), (B,) -> (B, D) the state after the whole history."""
        return states[torch.arange(states.shape[0], device=states.device), (lengths - 1).clamp(min=0)]

    def query_vector(self, query_embedding: torch.Tensor) -> torch.Tensor:
        return self.query_proj(query_embedding)  # (…, D)

    # ---- behaviour ---------------------------------------------------------------------------

    def set_behaviour_heads(self, heads: list[nn.Sequential]) -> None:
        """Make the behaviour head the mean of `heads` (config.behaviour_heads of them, each as new_behaviour_head
        builds with config.feature_hidden units): exactly, as one MLP of their hidden units side by side."""
        if len(heads) != self.config.behaviour_heads:
            raise ModelError(f"{len(heads)} behaviour heads given; the config has {self.config.behaviour_heads}")
        with torch.no_grad():
            first, last = self.behaviour_head[0], self.behaviour_head[-1]
            first.weight.copy_(torch.cat([h[0].weight for h in heads]))
            first.bias.copy_(torch.cat([h[0].bias for h in heads]))
            last.weight.copy_(torch.cat([h[-1].weight for h in heads], dim=1) / len(heads))
            last.bias.copy_(torch.stack([h[-1].bias for h in heads]).mean(0))

    def behaviour_score(self, features: torch.Tensor) -> torch.Tensor:
        """(…, F) raw behaviour features -> (…,) their part of the score. SHAP explains exactly this.

        Computed in the features' dtype: float64 features give the same function in float64, which SHAP's
        additivity needs (float32 rounding alone is ~1e-6 of the score).
        """
        if features.dtype == self.feature_mean.dtype:
            standard = (features - self.feature_mean) / self.feature_std
            return self.behaviour_head(standard).squeeze(-1)
        # Cast copies of the weights, never the module's own: other threads may be scoring with it right now.
        x = (features - self.feature_mean.to(features.dtype)) / self.feature_std.to(features.dtype)
        for layer in self.behaviour_head:
            if isinstance(layer, nn.Linear):
                x = nn.functional.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))
            else:  # activations work in any dtype
                x = layer(x)
        return x.squeeze(-1)
