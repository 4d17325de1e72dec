"""Classic RFM quintile scores and segments, as the FLO notebooks compute them with pandas.qcut."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

QUINTILES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)

# (R digits, F digits, segment) in the notebooks' regex-map order; the first match wins.
RFM_SEGMENT_RULES: tuple[tuple[str, str, str], ...] = (
    ("12", "12", "hibernating"),
    ("12", "34", "at_risk"),
    ("12", "5", "cant_lose"),
    ("3", "12", "about_to_sleep"),
    ("3", "3", "need_attention"),
    ("34", "45", "loyal_customers"),
    ("4", "1", "promising"),
    ("5", "1", "new_customers"),
    ("45", "23", "potential_loyalists"),
    ("5", "45", "champions"),
)
RFM_SEGMENTS: tuple[str, ...] = tuple(dict.fromkeys(rule[2] for rule in RFM_SEGMENT_RULES))


@dataclass(frozen=True, kw_only=True)
class RfmEdges:
    """Inner quintile edges fixed at training time: recency and monetary values, frequency values."""

    recency: tuple[float, ...]
    frequency: tuple[float, ...]
    monetary: tuple[float, ...]


def quantile_bin(value_col: Column, inner_edges: tuple[float, ...]) -> Column:
    """1..5 like pandas.qcut: right-closed bins, values past the outer edges clamp to the end bins."""
    out: Column = F.lit(1)
    for edge in inner_edges:
        out = out + F.when(value_col > F.lit(edge), 1).otherwise(0)
    return out.cast("int")


def rfm_segment(r_score_col: Column, f_score_col: Column) -> Column:
    """The notebooks' segment name from the R and F digits."""
    out: Column = F.lit(None).cast("string")
    for r_digits, f_digits, name in reversed(RFM_SEGMENT_RULES):
        hit = r_score_col.isin([int(d) for d in r_digits]) & f_score_col.isin([int(d) for d in f_digits])
        out = F.when(hit, F.lit(name)).otherwise(out)
    return out


def with_rfm_segment(scored_df: DataFrame) -> DataFrame:
    """Adds `rfm_segment` from `r_score` and `f_score`."""
    return scored_df.withColumn("rfm_segment", rfm_segment(F.col("r_score"), F.col("f_score")))


def with_rfm_scores(features_df: DataFrame, edges: RfmEdges) -> DataFrame:
    """Scores against fixed edges (re-scoring, streaming): a frequency on an edge takes the lower bin."""
    return features_df.select(
        "*",
        (F.lit(6) - quantile_bin(F.col("recency"), edges.recency)).alias("r_score"),
        quantile_bin(F.col("frequency"), edges.frequency).alias("f_score"),
        quantile_bin(F.col("monetary"), edges.monetary).alias("m_score"),
    ).transform(with_rfm_segment)


def exact_quantiles(df: DataFrame, col_name: str) -> tuple[float, ...]:
    """Linear-interpolated quantiles (numpy's default, which pandas.qcut uses), computed exactly."""
    probs = F.array(*[F.lit(q) for q in QUINTILES])
    row = df.select(F.percentile(F.col(col_name).cast("double"), probs).alias("q")).first()
    if row is None or row["q"] is None:
        raise ValueError(f"cannot compute quintiles of {col_name}: no rows")
    return tuple(float(v) for v in row["q"])


@dataclass(frozen=True, kw_only=True)
class FrequencyRanks:
    """How many customers have each frequency: enough to rank like `rank(method="first")`."""

    counts: tuple[tuple[int, int], ...]  # (frequency, customers), ascending frequency

    @property
    def total(self) -> int:
        """Number of ranked customers."""
        return sum(c for _, c in self.counts)

    def rank_edges(self) -> tuple[float, ...]:
        """qcut's inner edges over ranks 1..n."""
        n = self.total
        return tuple(1.0 + q * (n - 1) for q in QUINTILES)

    def ranks_before(self) -> dict[int, int]:
        """Customers ranked before the first customer of each frequency."""
        out, seen = {}, 0
        for value, count in self.counts:
            out[value] = seen
            seen += count
        return out

    def value_edges(self) -> tuple[float, ...]:
        """Frequency of the last rank inside each of the first four bins, for fixed-edge scoring."""
        before = self.ranks_before()
        edges = []
        for rank_edge in self.rank_edges():
            last_rank = int(rank_edge)  # ranks are integers; bin i holds ranks <= edge_i
            value = max(v for v, _ in self.counts if before[v] < max(last_rank, 1))
            edges.append(float(value))
        return tuple(edges)


def frequency_ranks(df: DataFrame) -> FrequencyRanks:
    """Customers per frequency value (a small table: frequencies are few)."""
    rows = df.groupBy("frequency").count().orderBy("frequency").collect()
    if not rows:
        raise ValueError("cannot rank frequencies: no rows")
    return FrequencyRanks(counts=tuple((int(r["frequency"]), int(r["count"])) for r in rows))


def frequency_rank_bins(ranks: FrequencyRanks) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """Where qcut's rank edges fall among the frequency values.

    Returns, per frequency, how many edges every customer of it is above, and a `(frequency, m)` for
    each edge that falls inside one frequency's ranks: its first m customers in input order stay below
    that edge, the others are above it (at most one per edge, so at most four).
    """
    before = ranks.ranks_before()
    above: dict[int, int] = {}
    splits: list[tuple[int, int]] = []
    for value, count in ranks.counts:
        above[value] = 0
        for edge in ranks.rank_edges():
            # Ranks before[value] + 1 .. before[value] + count; the j-th is above the edge when j > edge - before.
            below = math.floor(edge - before[value])
            if below <= 0:
                above[value] += 1
            elif below < count:
                splits.append((value, below))
    return above, splits


def split_order_values(features_df: DataFrame, splits: list[tuple[int, int]], order_col_name: str) -> list[Column]:
    """For each split `(frequency, m)`: 1 for the customers of that frequency after its m-th in input order.

    The m-th customer's order value comes from a ranking of just (frequency, order) for the split
    frequencies, a narrow job; the scored frame itself needs no window (no shuffle of every column).
    """
    if not splits:
        return []
    within = Window.partitionBy("frequency").orderBy(F.col(order_col_name))
    wanted = F.lit(False)
    for value, below in splits:
        wanted = wanted | ((F.col("frequency") == value) & (F.col("_position") == below))
    found = {
        (int(r["frequency"]), int(r["_position"])): r[order_col_name]
        for r in features_df.where(F.col("frequency").isin(sorted({v for v, _ in splits})))
        .select("frequency", order_col_name, F.row_number().over(within).alias("_position"))
        .where(wanted)
        .collect()
    }
    return [
        F.when((F.col("frequency") == value) & (F.col(order_col_name) > F.lit(found[(value, below)])), 1).otherwise(0)
        for value, below in splits
    ]


def with_training_rfm_scores(
    features_df: DataFrame, edges: RfmEdges, ranks: FrequencyRanks, order_col_name: str
) -> DataFrame:
    """Training-time scores equal to the notebooks': F from the first-come rank of frequency.

    The rank itself is never computed: a customer's F bin is the number of rank edges below their rank,
    known from their frequency alone except at the (at most four) edges inside one frequency's ranks,
    where their input order decides (`split_order_values`).
    """
    above, splits = frequency_rank_bins(ranks)
    passed = F.create_map(*[F.lit(x) for v, n in above.items() for x in (v, n)])
    f_score = F.lit(1) + F.element_at(passed, F.col("frequency"))
    for split in split_order_values(features_df, splits, order_col_name):
        f_score = f_score + split
    return features_df.select(
        "*",
        (F.lit(6) - quantile_bin(F.col("recency"), edges.recency)).alias("r_score"),
        f_score.cast("int").alias("f_score"),
        quantile_bin(F.col("monetary"), edges.monetary).alias("m_score"),
    ).transform(with_rfm_segment)


def training_rfm_edges(features_df: DataFrame) -> tuple[RfmEdges, FrequencyRanks]:
    """Quintile edges of the training population (two small Spark actions)."""
    ranks = frequency_ranks(features_df)
    edges = RfmEdges(
        recency=exact_quantiles(features_df, "recency"),
        frequency=ranks.value_edges(),
        monetary=exact_quantiles(features_df, "monetary"),
    )
    return edges, ranks
