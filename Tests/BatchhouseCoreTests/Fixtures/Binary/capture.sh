#!/usr/bin/env bash
# Regenerates the binary fixtures from the two test servers (scripts/clickhouse-start, scripts/modern-start).
# Usage: capture.sh OLD_URL MODERN_URL   (run from this folder)
set -euo pipefail
old=$1 modern=$2
q() { curl -sS --fail-with-body "$1/" --data-binary "$2"; }
s() { curl -sS --fail-with-body "$1/?allow_experimental_low_cardinality_type=1" --data-binary "$2"; }

s "$old" "DROP TABLE IF EXISTS default.fx"
s "$old" "CREATE TABLE default.fx (i8 Int8, u64 UInt64, f32 Float32, f64 Float64, d Decimal(38,10), d32 Decimal32(2),
  s String, fs FixedString(3), dt Date, dtm DateTime, dtz DateTime('UTC'), uu UUID, e8 Enum8('a' = 1, 'b,(c)' = -2),
  ns Nullable(String), an Array(Nullable(Int32)), lc LowCardinality(String), lcn LowCardinality(Nullable(String)),
  alc Array(LowCardinality(String)), n Nested(x UInt8, y String), t Tuple(Int8, String)) ENGINE = Memory"
s "$old" "INSERT INTO default.fx VALUES
  (-1, 18446744073709551615, 1.5, -2.25, 1234567890.0123456789, 12.34, 'hello', 'abc', '2020-01-02', '2020-01-02 03:04:05',
   '2020-01-02 03:04:05', '01234567-89ab-cdef-0123-456789abcdef', 'a', NULL, [1, NULL, 3], 'x', NULL, ['p', 'q'], [1, 2], ['u', 'v'], (5, 'five')),
  (2, 0, 0, 0, 0, 0, '', 'de\0', '1970-01-01', '1970-01-02 00:00:00', '1970-01-02 00:00:00', '00000000-0000-0000-0000-000000000000',
   'b,(c)', 'not null', [], 'y', 'z', [], [], [], (0, '')),
  (3, 7, -0.5, 1e100, -1, -0.01, 'tab\there', 'xyz', '2100-12-31', '2030-06-07 08:09:10', '2030-06-07 08:09:10',
   'ffffffff-ffff-ffff-ffff-ffffffffffff', 'a', '', [NULL], 'x', 'z', ['q', 'r', 'p'], [9], ['w'], (-128, 'min'))"
s "$old" "SELECT * FROM default.fx FORMAT Native" > old-all.native
s "$old" "SELECT * FROM default.fx FORMAT RowBinary" > old-all.rowbinary
s "$old" "SELECT * FROM default.fx LIMIT 1, 2 FORMAT Native" > old-rows-1-2.native
s "$old" "SELECT * FROM default.fx WHERE 0 FORMAT Native" > old-empty.native
q "$old" "DESCRIBE TABLE default.fx FORMAT TabSeparated" > old-describe.tsv

q "$modern" "DROP TABLE IF EXISTS default.fx"
q "$modern" "CREATE TABLE default.fx (i8 Int8, u64 UInt64, i256 Int256, u128 UInt128, f32 Float32, f64 Float64, bf BFloat16,
  d Decimal(38,10), d256 Decimal256(5), b Bool, s String, fs FixedString(3), dt Date, d32 Date32, dtm DateTime,
  dtz DateTime('UTC'), dt64 DateTime64(3,'UTC'), uu UUID, ip4 IPv4, ip6 IPv6, e8 Enum8('a' = 1, 'b,(c)' = -2, 'q''\\'' = 3),
  e16 Enum16('big' = 1000), ns Nullable(String), an Array(Nullable(Int32)), lc LowCardinality(String),
  lcn LowCardinality(Nullable(String)), alc Array(LowCardinality(String)), m Map(String, Array(UInt8)),
  t Tuple(a Int8, b String), n Nested(x UInt8, y String), saf SimpleAggregateFunction(sum, UInt64),
  mat UInt8 MATERIALIZED i8 + 1, al UInt8 ALIAS i8 + 2, eph UInt8 EPHEMERAL, def UInt8 DEFAULT 7 COMMENT 'with\ttab') ENGINE = Memory"
q "$modern" "INSERT INTO default.fx (i8, u64, i256, u128, f32, f64, bf, d, d256, b, s, fs, dt, d32, dtm, dtz, dt64, uu, ip4, ip6, e8, e16, ns, an, lc, lcn, alc, m, t, n.x, n.y, saf, eph, def) VALUES
  (-1, 18446744073709551615, -57896044618658097711785492504343953926634992332820282019728792003956564819968, 1, 1.5, -2.25, 1.5,
   1234567890.0123456789, -1.5, true, 'hello', 'abc', '2020-01-02', '1900-01-01', '2020-01-02 03:04:05',
   '2020-01-02 03:04:05', '2020-01-02 03:04:05.678', '01234567-89ab-cdef-0123-456789abcdef', '1.2.3.4', '::1', 'a', 'big',
   NULL, [1, NULL, 3], 'x', NULL, ['p', 'q'], {'k': [1, 2], 'l': []}, (5, 'five'), [1, 2], ['u', 'v'], 10, 0, 1),
  (2, 0, 0, 0, 0, 0, 0, 0, 0, false, '', 'de\0', '1970-01-01', '2299-12-31', '1970-01-02 00:00:00', '1970-01-02 00:00:00',
   '1970-01-02 00:00:00', '00000000-0000-0000-0000-000000000000', '0.0.0.0', '2001:db8::8a2e:370:7334', 'b,(c)', 'big',
   'not null', [], 'y', 'z', [], {}, (0, ''), [], [], 0, 0, 2),
  (3, 7, 1, 2, -0.5, 1e100, -2, -1, 3, true, 'tab\there', 'xyz', '2100-12-31', '2000-02-29', '2030-06-07 08:09:10',
   '2030-06-07 08:09:10', '2030-06-07 08:09:10.001', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '255.255.255.255', '::', 'q''\\'',
   'big', '', [NULL], 'x', 'z', ['q', 'r', 'p'], {'m': [255]}, (-128, 'min'), [9], ['w'], 5, 0, 3)"
q "$modern" "SELECT * FROM default.fx FORMAT Native" > modern-all.native
q "$modern" "SELECT * FROM default.fx FORMAT RowBinary" > modern-all.rowbinary
q "$modern" "SELECT * FROM default.fx FORMAT RowBinaryWithNamesAndTypes" > modern-all.rowbinarywnt
q "$modern" "SELECT * FROM default.fx FORMAT RowBinaryWithNames" > modern-all.rowbinarywn
q "$modern" "SELECT * FROM default.fx LIMIT 1, 2 FORMAT Native" > modern-rows-1-2.native
q "$modern" "SELECT * FROM default.fx LIMIT 1 FORMAT Native" > modern-rows-0-1.native
q "$modern" "SELECT * FROM default.fx WHERE 0 FORMAT Native" > modern-empty.native
q "$modern" "DESCRIBE TABLE default.fx FORMAT TabSeparated" > modern-describe.tsv
