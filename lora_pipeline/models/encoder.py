"""Kinds ``encoder`` and ``sentence-encoder``: a BERT-family encoder with a classification head per adapter.

The two differ only in what the head reads. ``encoder``: BERT's pooler (dense + tanh) on the [CLS] state.
``sentence-encoder``: the same pooler layer on the mask-weighted mean of the last hidden states, which is
how a sentence encoder such as all-MiniLM-L6-v2 was trained to represent a text (its [CLS] state never was).
Both add a bag-of-words term to the head's logits (a linear map from the TF-IDF vector of all the text's
tokens). Training: LoRA on the attention projections; the new head, the pooler's dense layer and the
bag-of-words term trained in full, on the loss of their sum and of each alone (:func:`classifier_loss`), or,
with lora.bag_of_words_fit 'logistic', the term first fitted as a logistic regression on the train split and
then kept fixed; the best checkpoint by validation macro-F1. Zero-shot baseline: cosine similarity of the
mean-pooled text embedding to an embedding of each label's description. Serving: every adapter's head and
bag-of-words term are zero-padded to one shared width, and each row's logits are cut back to its own labels
before the softmax.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from peft import TaskType
from transformers import AutoConfig, AutoModel, BatchEncoding, BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput

from lora_pipeline.models.bases import LOAD_LOCK, base_model_path, load_tokenizer
from lora_pipeline.models.compute import model_device
from lora_pipeline.models.kind import ModelKind
from lora_pipeline.models.text_length import encode_head_tail

if TYPE_CHECKING:
    from lora_pipeline.config import EvaluationInputs, TrainConfig
    from lora_pipeline.models.adapters import AdapterMeta, LoadedAdapter

# Head module names of transformers' sequence classifiers (BERT: classifier, decoder-only LMs: score).
HEAD_NAMES = ("classifier", "score")
BAG_OF_WORDS = "bag_of_words"  # the module name of the bag-of-words term (lora.modules_to_save)
# Modules with one weight row per label: a serving pool zero-pads them to its shared width.
PER_LABEL_MODULES = (*HEAD_NAMES, BAG_OF_WORDS)


# The bag-of-words term reads all of a text's tokens, not only the head+tail the encoder attends to: counting
# them costs next to nothing at any length, and TF-IDF, the baseline, reads the whole text too.
BAG_OF_WORDS_IDS = "bag_of_words_ids"
BAG_OF_WORDS_MASK = "bag_of_words_mask"


def pad_batch(tokenizer, features: list[dict]) -> BatchEncoding:
    """One batch of encoded texts, padded: the cut ids (and labels, if any) by the tokenizer; the texts' full
    ids, where ``features`` have them, to their own longest, with a mask of their own."""
    batch = tokenizer.pad([{k: v for k, v in f.items() if k != BAG_OF_WORDS_IDS} for f in features],
                          return_tensors="pt")
    if features and BAG_OF_WORDS_IDS in features[0]:
        full = [f[BAG_OF_WORDS_IDS] for f in features]
        width = max(len(ids) for ids in full)
        batch[BAG_OF_WORDS_IDS] = torch.tensor([ids + [0] * (width - len(ids)) for ids in full])
        batch[BAG_OF_WORDS_MASK] = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in full])
    return batch


class _EncodedTexts(torch.utils.data.Dataset):
    def __init__(self, tokenizer, texts: list[str], labels: list[int], max_length: int):
        self.features = encode_head_tail(tokenizer, texts, max_length, full_ids_key=BAG_OF_WORDS_IDS)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**self.features[i], "labels": self.labels[i]}


def padded_batches(tokenizer, texts: list[str], max_lengths: list[int], batch_size: int, device,
                   term_reads: list[str] | None = None) -> Iterator[tuple[list[int], BatchEncoding]]:
    """(row indices, their padded batch on ``device``). Each text is cut head+tail at its own adapter's
    max_length (as in training); rows of similar length share a batch (shortest first), so a batch pads
    to its own longest row instead of the longest row of the whole request. ``term_reads``: per row, what its
    adapter's bag-of-words term counts (AdapterMeta.bag_of_words_reads: 'all' of the text, or the 'head_tail'
    the encoder reads); None: no ids for a term (a bare encoder takes none)."""
    features: list[dict] = [{}] * len(texts)
    reads = term_reads or [None] * len(texts)
    for max_length, read in set(zip(max_lengths, reads)):
        rows = [i for i, key in enumerate(zip(max_lengths, reads)) if key == (max_length, read)]
        encoded = encode_head_tail(tokenizer, [texts[i] for i in rows], max_length,
                                   full_ids_key=BAG_OF_WORDS_IDS if read == "all" else None)
        for i, row in zip(rows, encoded):
            features[i] = row if read != "head_tail" else {**row, BAG_OF_WORDS_IDS: row["input_ids"]}
    order = sorted(range(len(texts)), key=lambda i: len(features[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, pad_batch(tokenizer, [features[i] for i in rows]).to(device)


def describe_label(label: str, descriptions: dict[str, str], template: str) -> str:
    """The sentence the zero-shot base embeds for ``label``: configured, or the template around its words
    ('credit_card' / 'creditCard' / 'credit-card' -> 'credit card')."""
    if label in descriptions:
        return descriptions[label]
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", label)
    words = re.sub(r"[_\-./]+", " ", words).strip().lower()
    return template.format(label=words or label)


def _masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's real (unpadded) token states: a row's vector does not depend on its batch."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


# The bag-of-words term's input scale (a fitted term's weights are divided by it): a term that trains
# (lora.bag_of_words_fit: trained) learns at the LoRA learning rate (2e-3, linearly decaying, ~150
# steps), which moves a weight by about 0.15 at most; scaled by this, a token's weight can reach the size a logistic
# regression on TF-IDF gives a telling word (a few units of logit). 100 won on talk and lost elsewhere, with the
# branch losses (on 7 domains of 8) and without (README, Held-out).
BAG_OF_WORDS_SCALE = 30.0
# The regularisation strengths (C) tried by lora.bag_of_words_fit: logistic and by the TF-IDF + LR that decides
# whether a domain of few labels gets the term (training/bag_of_words.py): the TF-IDF baseline's default grid
# (eval.tfidf_c_grid), copied, not read from it: evaluation settings are not part of what training is keyed by.
BAG_OF_WORDS_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def token_counts(input_ids: torch.Tensor, attention_mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Each row's (unpadded) tokens as counts over the vocabulary."""
    counts = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, attention_mask.to(counts.dtype))


def inverse_document_frequency(token_ids: list[list[int]], vocab_size: int) -> torch.Tensor:
    """scikit-learn's smooth idf, ln((1 + n) / (1 + df)) + 1, of each token over ``token_ids`` (a domain's train
    texts); 0 for a token no train text has, which (as TF-IDF's vocabulary does) leaves it out of the norm."""
    df = torch.zeros(vocab_size)
    for ids in token_ids:
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
    idf = torch.log((1 + len(token_ids)) / (1 + df)) + 1
    return torch.where(df > 0, idf, torch.zeros_like(idf))


@dataclass
class ClassifierOutput(SequenceClassifierOutput):
    """``logits``: the head's plus the bag-of-words term's. ``term_logits``: the term's alone, while training only
    (the Trainer's evaluation collects every output as a prediction; a serving pool never needs it)."""

    term_logits: torch.FloatTensor | None = None


def classifier_loss(outputs, labels: torch.Tensor, class_weights: torch.Tensor | None = None,
                    branch_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the logits (the head's + the term's), plus ``branch_weight`` x the cross-entropy of each
    of the two alone, where the term is training (train.branch_loss_weight): so that each is a classifier on its
    own, rather than one half of a sum fitted together, and the sum an ensemble of the two."""
    logits, term = outputs["logits"], outputs.get("term_logits")

    def cross_entropy(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(x.float(), labels.view(-1), weight=class_weights)

    loss = cross_entropy(logits)
    # A term left out of the domain's adapter stays zero; a fitted one is fixed: no branch losses for either.
    if branch_weight and term is not None and term.requires_grad:
        # logits - term: the head's logits, to bf16's rounding of the sum under autocast (~0.4 %); the gradients
        # the two branch losses send are exact.
        loss = loss + branch_weight * (cross_entropy(logits - term) + cross_entropy(term))
    return loss


class BagOfWords(torch.nn.Linear):
    """The bag-of-words term: token counts -> log(1 + count) x idf, L2-normalised (TF-IDF's sublinear tf, idf and
    norm), times BAG_OF_WORDS_SCALE -> a linear map to the labels' logits. ``idf`` is set from the domain's train
    split before training and saved with the adapter; its initial ones (no weighting) are what an adapter saved
    without one was trained with. A Linear, so that peft routes it per row in a mixed-adapter batch."""

    def __init__(self, vocab_size: int, num_labels: int):
        super().__init__(vocab_size, num_labels, bias=False)
        self.register_buffer("idf", torch.ones(vocab_size))

    def features(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.log1p(counts) * self.idf, dim=-1)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return super().forward(BAG_OF_WORDS_SCALE * self.features(counts))


def fit_logistic_term(term: BagOfWords, train_dataset, val_dataset, c_grid=BAG_OF_WORDS_C_GRID) -> float:
    """Set ``term``'s weights to a logistic regression (scikit-learn's, no intercept: the head has one) on its
    own features of ``train_dataset``, with C chosen from ``c_grid`` by validation log-loss, not macro-F1: the
    term's logits are added to the head's, so their scale matters, not only their argmax. Class-balanced
    whatever train.class_weights says: the gate compares macro-F1, and on balanced labels it changes nothing.
    Returns the C chosen. Seconds on a CPU (800 posts: 2.5 s for 4 labels, 8 s for 20), before training and
    not in its train_seconds."""
    from sklearn.linear_model import LogisticRegression  # training only: not in a server
    from sklearn.metrics import log_loss

    @torch.no_grad()
    def features(dataset) -> sp.csr_matrix:
        rows = []
        for f in dataset.features:
            ids = torch.tensor([f[BAG_OF_WORDS_IDS]], device=term.idf.device)
            counts = token_counts(ids, torch.ones_like(ids), term.in_features)
            rows.append(sp.csr_matrix(term.features(counts).float().cpu().numpy()))
        return sp.vstack(rows).tocsr()

    x_train, y_train = features(train_dataset), np.asarray(train_dataset.labels)
    x_val, y_val = features(val_dataset), np.asarray(val_dataset.labels)
    known = np.isin(y_val, y_train)  # log-loss is over the labels the regression knows
    best = None
    for c in c_grid:  # ties go to the first: the smallest C
        model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced", fit_intercept=False)
        model.fit(x_train, y_train)
        loss = log_loss(y_val[known], model.predict_proba(x_val[known]), labels=model.classes_)
        if best is None or loss < best[0]:
            best = (loss, c, model)
    _, c, model = best
    # one row of weights per label; a label without train rows gets none; two labels: sklearn keeps one row
    coef = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_, model.coef_]) / 2
    weight = torch.zeros_like(term.weight)
    weight[torch.as_tensor(model.classes_, device=weight.device)] = (
        torch.as_tensor(coef, dtype=weight.dtype, device=weight.device) / BAG_OF_WORDS_SCALE)
    with torch.no_grad():
        term.weight.copy_(weight)
    return float(c)


class BertClassifier(BertForSequenceClassification):
    """BERT with a classification head on BERT's pooler (dense + tanh on the [CLS] state), plus a bag-of-words
    term (:class:`BagOfWords`): a linear map from the TF-IDF vector of the text's tokens, all of them, not only
    the head+tail the encoder reads, to the logits, added to the head's.

    The bag-of-words term is what TF-IDF + logistic regression has and a pooled sentence vector blurs: the
    identity of the words. On forum posts and news TF-IDF beat the LoRA adapter where topic words decide the
    label (README, Held-out). It starts at zero and is fitted (or trained: lora.bag_of_words_fit) only where
    ``bag_of_words`` is in the domain's lora.modules_to_save (by default: a domain of at least
    lora.bag_of_words_min_labels labels, or of fewer whose words tell its labels apart: training/bag_of_words.py);
    otherwise it stays zero and the model is plain BERT's classifier. Its
    own loss (with ``labels``): :func:`classifier_loss` unweighted, without branch losses; in the Trainer the
    kind's ``loss_function`` replaces it."""

    def __init__(self, config):
        super().__init__(config)
        self.bag_of_words = BagOfWords(config.vocab_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if module is getattr(self, "bag_of_words", None):
            torch.nn.init.zeros_(module.weight)  # no term until trained: a fresh one must not add noise
            torch.nn.init.ones_(module.idf)
        else:
            super()._init_weights(module)

    def pooled(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        return outputs.pooler_output

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, bag_of_words_ids=None, bag_of_words_mask=None,
                **kwargs) -> ClassifierOutput:
        """``bag_of_words_ids`` / ``_mask``: all of each text's tokens, for the bag-of-words term (default: the
        tokens the encoder reads, ``input_ids``)."""
        kwargs.pop("return_dict", None)  # peft passes it; the output is always a ModelOutput
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones(outputs.last_hidden_state.shape[:2], device=outputs.last_hidden_state.device)
        logits = self.classifier(self.dropout(self.pooled(outputs, attention_mask)))
        term = None
        if bag_of_words_ids is None:
            bag_of_words_ids, bag_of_words_mask = input_ids, attention_mask
        if bag_of_words_ids is not None:
            if bag_of_words_mask is None:
                bag_of_words_mask = torch.ones_like(bag_of_words_ids)
            term = self.bag_of_words(token_counts(bag_of_words_ids, bag_of_words_mask, self.config.vocab_size))
            logits = logits + term
        branches = {"logits": logits, "term_logits": term if self.training else None}
        loss = None if labels is None else classifier_loss(branches, labels)
        return ClassifierOutput(loss=loss, **branches)


class MeanPooledBertClassifier(BertClassifier):
    """BERT whose head reads the mean of the last hidden states, through BERT's pooler layer (dense + tanh,
    trained with the head), instead of the [CLS] state; the bag-of-words term as in :class:`BertClassifier`.

    Measured on the held-out sets (README): mean pooling alone lifted BBC News (0.949 -> 0.974 macro-F1)
    but lost on forum posts (rec 0.958 -> 0.924); the trained dense layer on the mean kept both (0.973,
    0.952)."""

    def pooled(self, outputs, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.bert.pooler.dense(_masked_mean(outputs.last_hidden_state, attention_mask)))


def _classifier(spec, labels: list[str], dropout: float | None = None,
                model_class: type = BertClassifier) -> torch.nn.Module:
    """The base with a fresh classification head sized for ``labels`` (head size is fixed at load).

    ``dropout`` replaces BERT's hidden and attention dropout; the new head keeps the config's rate
    (it is trained, so its dropout still regularises what is learned)."""
    path = base_model_path(spec.name)
    rates = {}
    if dropout is not None:
        config = AutoConfig.from_pretrained(path)
        rates = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
                 "classifier_dropout": config.classifier_dropout or config.hidden_dropout_prob}
    with LOAD_LOCK:
        return model_class.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, use_safetensors=True, **rates)


@torch.inference_mode()
def _embed(encoder, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Mean-pooled, L2-normalised token embeddings: how all-MiniLM-L6-v2 makes sentence vectors."""
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    for rows, batch in padded_batches(tokenizer, texts, [max_length] * len(texts), batch_size, model_device(encoder)):
        pooled = _masked_mean(encoder(**batch).last_hidden_state.float(), batch["attention_mask"])
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    return out


class EncoderClassifier(ModelKind):
    name: ClassVar[str] = "encoder"
    model_class: ClassVar[type] = BertClassifier  # the head on BERT's [CLS] pooler
    task_type = TaskType.SEQ_CLS
    checkpoint_metric = "macro_f1"
    greater_is_better = True
    baselines = ("base",)

    def load_base(self, spec, labels, cache_dir, dropout=None):
        return _classifier(spec, labels, dropout, self.model_class)

    def training_data(self, tokenizer, splits, max_length, instruction, max_answer_tokens=None):
        label_ids = {label: i for i, label in enumerate(splits.labels)}

        def encoded(split: str) -> _EncodedTexts:
            df = splits.read(split)
            return _EncodedTexts(tokenizer, df["text"].tolist(), [label_ids[x] for x in df["label"]], max_length)

        return encoded("train"), encoded("val"), functools.partial(pad_batch, tokenizer)  # dynamic padding

    def fit_to_train_data(self, model, train_dataset, val_dataset, lora):
        """The bag-of-words term's idf, from the train split's tokens (as TF-IDF's is from the same rows); with
        lora.bag_of_words_fit 'logistic', the weights of the term this domain trains (where it trains one), which
        then stay fixed. Returns {"bag_of_words_c": C chosen} for such a term, else {}."""
        terms = [m for m in model.modules() if isinstance(m, BagOfWords)]
        if not terms:
            return {}
        idf = inverse_document_frequency([f[BAG_OF_WORDS_IDS] for f in train_dataset.features], terms[0].in_features)
        for term in terms:  # the trained copy and the base's own (which stays zero-weighted)
            term.idf.copy_(idf)
        trained = [term for term in terms if term.weight.requires_grad]  # none: a domain without the term
        if lora.bag_of_words_fit != "logistic" or not trained:
            return {}
        c = fit_logistic_term(trained[0], train_dataset, val_dataset)
        trained[0].weight.requires_grad_(False)  # a fitted model, not a starting point: the head learns beside it
        return {"bag_of_words_c": c}

    def compute_metrics(self, labels):
        from lora_pipeline.evaluation.metrics import classification_metrics  # training only: not in a server

        def compute(pred) -> dict[str, float]:
            y_pred = np.asarray(pred.predictions).argmax(axis=-1)
            m = classification_metrics(pred.label_ids, y_pred, list(range(len(labels))))
            return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}

        return compute

    def loss_function(self, class_weights, tokenizer, labels, train):
        # Always a function (the branch losses), so the Trainer takes it as already scaled for gradient
        # accumulation: none is configured (one batch a step); with some, divide by its steps here.
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)

        def loss(outputs, labels, num_items_in_batch=None):
            return classifier_loss(outputs, labels, None if weights is None else weights.to(labels.device),
                                   train.branch_loss_weight)

        return loss

    def validation_batch_size(self, train: TrainConfig) -> int:
        return 2 * train.batch_size  # no gradients to hold

    @torch.inference_mode()
    def predict_proba(self, model, tokenizer, texts, metas: list[AdapterMeta], batch_size, adapter_names=None):
        model.eval()
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        max_lengths, term_reads = [m.max_length for m in metas], [m.bag_of_words_reads for m in metas]
        for rows, batch in padded_batches(tokenizer, texts, max_lengths, batch_size, model_device(model), term_reads):
            routing = {"adapter_names": [adapter_names[i] for i in rows]} if adapter_names else {}
            logits = model(**batch, **routing).logits.float().cpu()
            for i, row in zip(rows, logits):
                out[i] = torch.softmax(row[: len(metas[i].labels)], dim=-1).numpy()
        return out

    def prediction_batch_size(self, inputs: EvaluationInputs) -> int:
        return inputs.eval.batch_size

    def baseline_predictions(self, adapter: LoadedAdapter, texts, labels, train, inputs: EvaluationInputs):
        """Zero-shot: each text gets the label whose description embedding is most cosine-similar."""
        with LOAD_LOCK:
            encoder = AutoModel.from_pretrained(base_model_path(inputs.base.name), use_safetensors=True).eval()
        encoder.to(model_device(adapter.model))
        tokenizer = load_tokenizer(inputs.base.name)
        descriptions = [describe_label(label, inputs.eval.label_descriptions, inputs.eval.label_template)
                        for label in labels]
        size, max_length = inputs.eval.batch_size, adapter.meta.max_length  # the length the adapter was given
        label_vecs = _embed(encoder, tokenizer, descriptions, max_length, size)
        text_vecs = _embed(encoder, tokenizer, texts, max_length, size)
        return {"base": [labels[i] for i in (text_vecs @ label_vecs.T).argmax(axis=1)]}

    def pool_base(self, spec, max_labels, cache_dir):
        return _classifier(spec, [f"slot{i}" for i in range(max_labels)], model_class=self.model_class)

    def pool_weights(self, weights, n_labels, width):
        """Zero-pad the head's (and the bag-of-words term's) weight/bias rows from ``n_labels`` to ``width`` (the
        extra logits are cut off)."""
        padded = dict(weights)
        for key, tensor in weights.items():
            module_path = key.rsplit(".", 1)[0]
            if module_path.rsplit(".", 1)[-1] in PER_LABEL_MODULES and tensor.shape[0] == n_labels:
                grown = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype)
                grown[:n_labels] = tensor
                padded[key] = grown
        return padded


class SentenceEncoderClassifier(EncoderClassifier):
    """A sentence encoder (trained to be read by mean pooling): the head reads the mean of its token states."""

    name: ClassVar[str] = "sentence-encoder"
    model_class: ClassVar[type] = MeanPooledBertClassifier
