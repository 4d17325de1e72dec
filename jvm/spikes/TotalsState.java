// Spike for issue 10 (benchmarks/state_designs.py compiles it): running totals per customer in a JVM
// flatMapGroupsWithState with initialState. Not part of the product; the measured winner of the spike.
package flo.spike;

import java.sql.Date;
import java.util.Collections;
import java.util.Iterator;

import org.apache.spark.api.java.function.FlatMapGroupsWithStateFunction;
import org.apache.spark.api.java.function.MapFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoder;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.streaming.GroupState;
import org.apache.spark.sql.streaming.GroupStateTimeout;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.types.StructType;

/** Spike: per-customer running totals in a JVM flatMapGroupsWithState, bootstrapped by initialState. */
public final class TotalsState {
  private TotalsState() {}

  public static Dataset<Row> apply(Dataset<Row> events, Dataset<Row> bootstrap) {
    StructType schema = bootstrap.schema();
    Encoder<Row> rows = Encoders.row(schema);
    MapFunction<Row, String> key = r -> r.getString(0);
    FlatMapGroupsWithStateFunction<String, Row, Row, Row> update = (id, values, state) -> {
      long on = 0, off = 0; double onV = 0, offV = 0; Date first = null, last = null;
      if (state.exists()) {
        Row s = state.get();
        on = s.getLong(1); off = s.getLong(2); onV = s.getDouble(3); offV = s.getDouble(4);
        first = s.getDate(5); last = s.getDate(6);
      }
      while (values.hasNext()) {
        Row e = values.next();  // master_id, amount, is_online, order_date
        double amount = e.getDouble(1);
        if (e.getBoolean(2)) { on++; onV += amount; } else { off++; offV += amount; }
        Date d = e.getDate(3);
        if (first == null || d.before(first)) first = d;
        if (last == null || d.after(last)) last = d;
      }
      Row out = RowFactory.create(id, on, off, onV, offV, first, last);
      state.update(out);
      return Collections.singletonList(out).iterator();
    };
    return events.groupByKey(key, Encoders.STRING()).flatMapGroupsWithState(
        update, OutputMode.Update(), rows, rows, GroupStateTimeout.NoTimeout(),
        bootstrap.groupByKey(key, Encoders.STRING()));
  }
}
