package flo.seg.state;

import java.sql.Date;
import java.sql.Timestamp;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import org.apache.spark.api.java.function.FlatMapGroupsWithStateFunction;
import org.apache.spark.api.java.function.MapFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.streaming.GroupState;
import org.apache.spark.sql.streaming.GroupStateTimeout;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

import scala.jdk.javaapi.CollectionConverters;

/**
 * Each customer's running state in the stream's state store, keyed by master_id, touched only for the
 * customers of a micro-batch (streaming/customer_state.py builds the input and reads the output).
 *
 * <p>Input rows are one of three kinds: {@code order} (a valid order), {@code segment} (a published
 * segment coming back to the state: the segment last published wins by its {@code segment_seq}) and
 * {@code invalid} (a quarantined event, keyed by its own Kafka coordinates: passed through untouched,
 * no state kept). The rules for orders are those of the customer_state MERGE they replace: counts and
 * cents add up, dates only move outward, and a late order never moves last_order_date back nor takes
 * over last_order_channel.
 *
 * <p>Orders are de-duplicated here, by the customer's {@code event_id}s of the last window of stream
 * time (the batch's processing time, fixed for a batch and for its replay): a copy with the same
 * content is a re-send, one with other content a conflicting reuse; both are dropped and counted. Of
 * copies in one batch the first by Kafka coordinates wins, so a replay keeps the same one. An id is
 * forgotten once the window has passed and the customer orders again.
 *
 * <p>Output: one {@code state} row per customer with new orders in the batch (the state after the
 * batch, with the segment published before it as {@code previous_segment}, the number of orders
 * applied as {@code batch_orders} and the copies dropped as {@code resent} / {@code conflicting}), a
 * {@code duplicate} row for a customer whose orders in the batch were all dropped, and the
 * {@code invalid} rows.
 */
public final class CustomerState {
  public static final String ORDER = "order";
  public static final String SEGMENT = "segment";
  public static final String INVALID = "invalid";
  public static final String STATE = "state";
  public static final String DUPLICATE = "duplicate";

  /** An event id the state remembers: its content hash and when stream time forgets it. */
  public static final StructType RECENT_EVENT =
      new StructType()
          .add("event_id", DataTypes.StringType)
          .add("content_key", DataTypes.LongType)
          .add("expires_ms", DataTypes.LongType);

  /** The state kept per customer, in this order; the bootstrap must have exactly these columns. */
  public static final StructType STATE_SCHEMA =
      new StructType()
          .add("master_id", DataTypes.StringType)
          .add("order_channel", DataTypes.StringType)
          .add("last_order_channel", DataTypes.StringType)
          .add("first_order_date", DataTypes.DateType)
          .add("last_order_date", DataTypes.DateType)
          .add("last_order_date_online", DataTypes.DateType)
          .add("last_order_date_offline", DataTypes.DateType)
          .add("online_orders", DataTypes.LongType)
          .add("offline_orders", DataTypes.LongType)
          .add("online_cents", DataTypes.LongType)
          .add("offline_cents", DataTypes.LongType)
          .add("categories", DataTypes.createArrayType(DataTypes.StringType))
          .add("last_order_ts", DataTypes.TimestampType)
          .add("seq", DataTypes.LongType)
          .add("segment", DataTypes.StringType)
          .add("model_version", DataTypes.StringType)
          .add("segment_seq", DataTypes.LongType)
          .add("segment_as_of", DataTypes.DateType);

  /** What the state store holds: STATE_SCHEMA and the customer's recent event ids. */
  public static final StructType STORE_SCHEMA =
      STATE_SCHEMA.add("recent_events", DataTypes.createArrayType(RECENT_EVENT));

  private CustomerState() {}

  /** The output schema for input rows whose quarantine struct has type {@code quarantine}. */
  public static StructType outputSchema(DataType quarantine) {
    StructType out = new StructType().add("kind", DataTypes.StringType);
    for (StructField f : STATE_SCHEMA.fields()) {
      out = out.add(f);
    }
    return out.add("previous_segment", DataTypes.StringType)
        .add("previous_model_version", DataTypes.StringType)
        .add("batch_orders", DataTypes.LongType)
        .add("resent", DataTypes.LongType)
        .add("conflicting", DataTypes.LongType)
        .add("quarantine", quarantine);
  }

  /**
   * The state step over a stream of input rows (see the class comment for their columns), with the
   * bootstrap used only when the query starts without a checkpoint (Spark's initialState), and event
   * ids remembered for {@code windowMs} of stream time.
   */
  public static Dataset<Row> apply(Dataset<Row> input, Dataset<Row> bootstrap, long windowMs) {
    if (windowMs <= 0) {
      throw new IllegalArgumentException("the de-duplication window must be positive, got " + windowMs + " ms");
    }
    requireSameFields("bootstrap", bootstrap.schema(), STATE_SCHEMA);
    StructType in = input.schema();
    StructType out = outputSchema(in.apply("quarantine").dataType());
    Columns c = new Columns(in);
    MapFunction<Row, String> key = r -> r.getString(c.masterId);
    MapFunction<Row, String> stateKey = r -> r.getString(0);
    FlatMapGroupsWithStateFunction<String, Row, Row, Row> update =
        (id, rows, state) -> step(c, windowMs, id, rows, state).iterator();
    Dataset<Row> initial =
        bootstrap
            .selectExpr(STATE_SCHEMA.fieldNames())
            .withColumn("recent_events", functions.lit(null).cast(DataTypes.createArrayType(RECENT_EVENT)));
    return input
        .groupByKey(key, Encoders.STRING())
        .flatMapGroupsWithState(
            update,
            OutputMode.Update(),
            Encoders.row(STORE_SCHEMA),
            Encoders.row(out),
            GroupStateTimeout.NoTimeout(),
            initial.groupByKey(stateKey, Encoders.STRING()));
  }

  private static void requireSameFields(String what, StructType got, StructType expected) {
    boolean same = got.length() == expected.length();
    for (StructField f : expected.fields()) {
      int i = got.getFieldIndex(f.name()).getOrElse(() -> -1);
      same = same && i >= 0 && got.fields()[i].dataType().equals(f.dataType());
    }
    if (!same) {
      throw new IllegalArgumentException(what + " has columns " + got.simpleString() + ", expected " + expected.simpleString());
    }
  }

  /** Column positions of the input rows, resolved once. */
  static final class Columns implements java.io.Serializable {
    private static final long serialVersionUID = 1L;
    final int kind;
    final int masterId;
    final int eventId;
    final int orderTime;
    final int orderDate;
    final int channel;
    final int isOnline;
    final int amountCents;
    final int categories;
    final int segment;
    final int modelVersion;
    final int segmentSeq;
    final int asOf;
    final int contentKey;
    final int kafkaPartition;
    final int kafkaOffset;
    final int quarantine;

    Columns(StructType in) {
      kind = in.fieldIndex("kind");
      masterId = in.fieldIndex("master_id");
      eventId = in.fieldIndex("event_id");
      orderTime = in.fieldIndex("order_time");
      orderDate = in.fieldIndex("order_date");
      channel = in.fieldIndex("channel");
      isOnline = in.fieldIndex("is_online");
      amountCents = in.fieldIndex("amount_cents");
      categories = in.fieldIndex("categories");
      segment = in.fieldIndex("segment");
      modelVersion = in.fieldIndex("model_version");
      segmentSeq = in.fieldIndex("segment_seq");
      asOf = in.fieldIndex("as_of");
      contentKey = in.fieldIndex("content_key");
      kafkaPartition = in.fieldIndex("kafka_partition");
      kafkaOffset = in.fieldIndex("kafka_offset");
      quarantine = in.fieldIndex("quarantine");
    }
  }

  /** One customer's state while a batch is applied to it. */
  static final class Customer {
    final String masterId;
    String orderChannel;
    String lastOrderChannel;
    Date firstOrderDate;
    Date lastOrderDate;
    Date lastOnline;
    Date lastOffline;
    long onlineOrders;
    long offlineOrders;
    long onlineCents;
    long offlineCents;
    List<String> categories;
    Timestamp lastOrderTs;
    long seq;
    String segment;
    String modelVersion;
    long segmentSeq;
    Date segmentAsOf;
    /** event_id -> (content_key, expires_ms), the ids of the last window. */
    Map<String, long[]> recent;

    Customer(String masterId) {
      this.masterId = masterId;
      this.categories = new ArrayList<>();
      this.segmentSeq = Long.MIN_VALUE;
      this.recent = new HashMap<>();
    }

    static Customer of(Row s) {
      Customer c = new Customer(s.getString(0));
      c.orderChannel = s.getString(1);
      c.lastOrderChannel = s.getString(2);
      c.firstOrderDate = s.getDate(3);
      c.lastOrderDate = s.getDate(4);
      c.lastOnline = s.getDate(5);
      c.lastOffline = s.getDate(6);
      c.onlineOrders = s.isNullAt(7) ? 0 : s.getLong(7);
      c.offlineOrders = s.isNullAt(8) ? 0 : s.getLong(8);
      c.onlineCents = s.isNullAt(9) ? 0 : s.getLong(9);
      c.offlineCents = s.isNullAt(10) ? 0 : s.getLong(10);
      c.categories = s.isNullAt(11) ? new ArrayList<>() : new ArrayList<>(s.getList(11));
      c.lastOrderTs = s.getTimestamp(12);
      c.seq = s.isNullAt(13) ? 0 : s.getLong(13);
      c.segment = s.getString(14);
      c.modelVersion = s.getString(15);
      c.segmentSeq = s.isNullAt(16) ? Long.MIN_VALUE : s.getLong(16);
      c.segmentAsOf = s.getDate(17);
      if (!s.isNullAt(18)) {
        for (Row e : s.<Row>getList(18)) {
          c.recent.put(e.getString(0), new long[] {e.getLong(1), e.getLong(2)});
        }
      }
      return c;
    }

    Object[] values() {
      return new Object[] {
        masterId, orderChannel, lastOrderChannel, firstOrderDate, lastOrderDate, lastOnline, lastOffline,
        onlineOrders, offlineOrders, onlineCents, offlineCents, CollectionConverters.asScala(categories).toList(), lastOrderTs, seq, segment,
        modelVersion, segmentSeq == Long.MIN_VALUE ? null : segmentSeq, segmentAsOf
      };
    }

    /** The state store's row: values() and the recent event ids. */
    Row stored() {
      Object[] values = values();
      Object[] row = new Object[values.length + 1];
      System.arraycopy(values, 0, row, 0, values.length);
      List<Row> events = new ArrayList<>(recent.size());
      for (Map.Entry<String, long[]> e : recent.entrySet()) {
        events.add(RowFactory.create(e.getKey(), e.getValue()[0], e.getValue()[1]));
      }
      row[values.length] = CollectionConverters.asScala(events).toList();
      return RowFactory.create(row);
    }
  }

  static List<Row> step(Columns c, long windowMs, String id, Iterator<Row> rows, GroupState<Row> state) {
    List<Row> out = new ArrayList<>();
    List<Row> orders = new ArrayList<>();
    List<Row> segments = new ArrayList<>();
    while (rows.hasNext()) {
      Row r = rows.next();
      String kind = r.getString(c.kind);
      if (INVALID.equals(kind)) {
        out.add(invalid(c, r));
      } else if (SEGMENT.equals(kind)) {
        segments.add(r);
      } else if (ORDER.equals(kind)) {
        orders.add(r);
      } else {
        throw new IllegalArgumentException("unknown input kind " + kind + " for " + id);
      }
    }
    if (orders.isEmpty() && segments.isEmpty()) {
      return out;
    }
    Customer s = state.exists() ? Customer.of(state.get()) : null;
    for (Row r : segments) {
      // Published segments of earlier batches (or of a sweep, re-score or retrain) come back here; the
      // newest wins: scored on a later state, then by a later model version, then at a later date.
      long seq = r.getLong(c.segmentSeq);
      String model = r.getString(c.modelVersion);
      Date asOf = r.getDate(c.asOf);
      if (s != null && isNewer(seq, model, asOf, s.segmentSeq, s.modelVersion, s.segmentAsOf)) {
        s.segment = r.getString(c.segment);
        s.modelVersion = model;
        s.segmentSeq = seq;
        s.segmentAsOf = asOf;
      }
    }
    boolean isNew = s == null;
    Customer customer = isNew ? new Customer(id) : s;
    long[] dropped = new long[2];
    if (!orders.isEmpty()) {
      orders = firstCopies(c, customer, orders, state.getCurrentProcessingTimeMs(), windowMs, dropped);
    }
    if (orders.isEmpty()) {
      if (s != null) {
        state.update(s.stored());
      }
      if (dropped[0] + dropped[1] > 0) {
        out.add(duplicate(id, dropped));
      }
      return out;
    }
    String previousSegment = isNew ? null : s.segment;
    String previousModel = isNew ? null : s.modelVersion;
    s = applyOrders(c, customer, isNew, orders);
    state.update(s.stored());
    out.add(output(STATE, s.values(), previousSegment, previousModel, (long) orders.size(), dropped, null));
    return out;
  }

  /** An output row (see outputSchema): the kind, the state's values, then the batch's own columns. */
  private static Row output(
      String kind, Object[] values, String previousSegment, String previousModel, Long batchOrders, long[] dropped, Object quarantine) {
    Object[] row = new Object[values.length + 7];
    row[0] = kind;
    System.arraycopy(values, 0, row, 1, values.length);
    row[values.length + 1] = previousSegment;
    row[values.length + 2] = previousModel;
    row[values.length + 3] = batchOrders;
    row[values.length + 4] = dropped == null ? null : dropped[0];
    row[values.length + 5] = dropped == null ? null : dropped[1];
    row[values.length + 6] = quarantine;
    return RowFactory.create(row);
  }

  /** State values holding only the key: the rows that carry no customer state. */
  private static Object[] keyOnly(String id) {
    Object[] values = new Object[STATE_SCHEMA.length()];
    values[0] = id;
    return values;
  }

  /**
   * The orders whose event_id the customer has not had within the window, the first copy of each
   * (by Kafka coordinates, then content, so a replay picks the same); the ids remembered and expired
   * as of {@code nowMs}. {@code dropped} counts re-sends [0] and conflicting reuses [1].
   */
  static List<Row> firstCopies(Columns c, Customer s, List<Row> orders, long nowMs, long windowMs, long[] dropped) {
    s.recent.values().removeIf(e -> e[1] <= nowMs);
    orders.sort(
        Comparator.comparing((Row r) -> r.isNullAt(c.kafkaPartition) ? Integer.MAX_VALUE : r.getInt(c.kafkaPartition))
            .thenComparing(r -> r.isNullAt(c.kafkaOffset) ? Long.MAX_VALUE : r.getLong(c.kafkaOffset))
            .thenComparing(r -> contentKey(c, r)));
    List<Row> kept = new ArrayList<>(orders.size());
    for (Row r : orders) {
      String eventId = r.getString(c.eventId);
      long content = contentKey(c, r);
      long[] seen = s.recent.get(eventId);
      if (seen == null) {
        s.recent.put(eventId, new long[] {content, nowMs + windowMs});
        kept.add(r);
      } else {
        dropped[seen[0] == content ? 0 : 1] += 1;
      }
    }
    return kept;
  }

  private static long contentKey(Columns c, Row r) {
    return r.isNullAt(c.contentKey) ? 0L : r.getLong(c.contentKey);
  }

  private static Row duplicate(String id, long[] dropped) {
    return output(DUPLICATE, keyOnly(id), null, null, null, dropped, null);
  }

  /** (seq, model version, as-of) compared in that order; a missing model version or date is oldest. */
  static boolean isNewer(long seq, String model, Date asOf, long oldSeq, String oldModel, Date oldAsOf) {
    if (seq != oldSeq) {
      return seq > oldSeq;
    }
    int byModel = Comparator.nullsFirst(Comparator.<String>naturalOrder()).compare(model, oldModel);
    if (byModel != 0) {
      return byModel > 0;
    }
    return Comparator.nullsFirst(Comparator.<Date>naturalOrder()).compare(asOf, oldAsOf) > 0;
  }

  private static Row invalid(Columns c, Row r) {
    return output(INVALID, keyOnly(r.getString(c.masterId)), null, null, null, null, r.get(c.quarantine));
  }

  static Customer applyOrders(Columns c, Customer s, boolean isNew, List<Row> orders) {
    // (order_time, event_id): the same order as the MERGE's min_by/max_by tiebreak.
    orders.sort(
        Comparator.comparing((Row r) -> r.getTimestamp(c.orderTime))
            .thenComparing(r -> r.getString(c.eventId)));
    Row first = orders.get(0);
    Row last = orders.get(orders.size() - 1);
    Date minDate = null;
    Date maxDate = null;
    Date maxOnline = null;
    Date maxOffline = null;
    TreeSet<String> newCategories = new TreeSet<>();
    for (Row r : orders) {
      Date d = r.getDate(c.orderDate);
      long cents = r.getLong(c.amountCents);
      if (r.getBoolean(c.isOnline)) {
        s.onlineOrders += 1;
        s.onlineCents += cents;
        maxOnline = latest(maxOnline, d);
      } else {
        s.offlineOrders += 1;
        s.offlineCents += cents;
        maxOffline = latest(maxOffline, d);
      }
      minDate = earliest(minDate, d);
      maxDate = latest(maxDate, d);
      if (!r.isNullAt(c.categories)) {
        for (Object category : r.getList(c.categories)) {
          if (category != null) {
            newCategories.add((String) category);
          }
        }
      }
    }
    Timestamp maxTime = last.getTimestamp(c.orderTime);
    if (isNew) {
      s.orderChannel = first.getString(c.channel);
      s.lastOrderChannel = last.getString(c.channel);
      s.lastOrderTs = maxTime;
    } else {
      // The latest order known: its time, or for a history row only its date (any order from that day
      // on is later). Both count: a late order's time must not hide a later last_order_date.
      Timestamp known = later(s.lastOrderTs, startOfDay(s.lastOrderDate));
      if (known == null || maxTime.compareTo(known) > 0) {
        s.lastOrderChannel = last.getString(c.channel);
      }
      s.lastOrderTs = s.lastOrderTs == null || maxTime.compareTo(s.lastOrderTs) > 0 ? maxTime : s.lastOrderTs;
    }
    s.firstOrderDate = earliest(s.firstOrderDate, minDate);
    s.lastOrderDate = latest(s.lastOrderDate, maxDate);
    s.lastOnline = latest(s.lastOnline, maxOnline);
    s.lastOffline = latest(s.lastOffline, maxOffline);
    LinkedHashSet<String> categories = new LinkedHashSet<>(s.categories);
    categories.addAll(newCategories);
    s.categories = new ArrayList<>(categories);
    s.seq += 1;
    return s;
  }

  private static Timestamp startOfDay(Date d) {
    return d == null ? null : Timestamp.from(d.toLocalDate().atStartOfDay(ZoneOffset.UTC).toInstant());
  }

  private static Timestamp later(Timestamp a, Timestamp b) {
    if (a == null) {
      return b;
    }
    return b == null || !b.after(a) ? a : b;
  }

  private static Date earliest(Date a, Date b) {
    if (a == null) {
      return b;
    }
    return b == null || !b.before(a) ? a : b;
  }

  private static Date latest(Date a, Date b) {
    if (a == null) {
      return b;
    }
    return b == null || !b.after(a) ? a : b;
  }
}
