"""Reads Batchhouse spool segments (the layout of Sources/BatchhouseSpool/RecordFormat.swift), so the corruption
scenarios know exactly which ids were in the records they damage.

    segment  := header record*
    header   := "BHSP" version:u8 reserved:u8[3]                       (8 bytes)
    record   := magic:u32 type:u8 length:u32 crc:u32 payload[length]     (13 + length bytes)
                crc = CRC-32 (zlib) of the type byte followed by the payload
    chunk    := id:u64 rows:i64 flags:u8 user:optstr password:optstr database:optstr table:str
                columns:(present:u8 [count:u32 str*]) format:str header:optbytes
                settings:(count:u32 (name:str value:str)*) data:bytes
    delivered:= count:u32 (first:u64 last:u64)*
    str := bytes (UTF-8); bytes := length:u32 byte*; opt<T> := present:u8 [T]; little-endian

The password field is skipped, never returned. Run alone: python3 spoolfmt.py SPOOL_DIR
"""

import os
import re
import struct
import sys
import zlib

SEGMENT_MAGIC = b"BHSP"
HEADER_SIZE = 8
RECORD_MAGIC = 0x5EC04DB1
RECORD_HEADER = 13
CHUNK, DELIVERED = 1, 2
VALUES_ID = re.compile(rb"\((\d+),")


class Record:
    def __init__(self, segment, offset, kind, length, valid):
        self.segment = segment
        self.offset = offset
        self.kind = kind
        self.length = length  # payload bytes
        self.valid = valid
        self.chunk_id = None
        self.rows = None
        self.table = None
        self.database = None
        self.format = None
        self.data_offset = None  # in the file
        self.data_length = None
        self.ids = []
        self.delivered = []

    @property
    def end(self):
        return self.offset + RECORD_HEADER + self.length

    def __repr__(self):
        return "<%s %s@%d id=%s rows=%s ids=%d>" % (
            "chunk" if self.kind == CHUNK else "delivered", os.path.basename(self.segment), self.offset,
            self.chunk_id, self.rows, len(self.ids))


class _Cursor:
    def __init__(self, data, offset):
        self.data = data
        self.offset = offset

    def take(self, count):
        if self.offset + count > len(self.data):
            raise ValueError("short payload")
        piece = self.data[self.offset:self.offset + count]
        self.offset += count
        return piece

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def raw(self):
        return self.take(self.u32())

    def text(self):
        return self.raw().decode("utf-8", errors="replace")

    def optional(self, read):
        present = self.u8()
        if present == 0:
            return None
        if present != 1:
            raise ValueError("bad optional flag")
        return read()


def segment_files(directory):
    names = sorted(name for name in os.listdir(directory) if re.fullmatch(r"segment-\d{20}\.wal", name))
    return [os.path.join(directory, name) for name in names]


def read_segment(path):
    """Every record of a segment in file order, checked as the proxy checks them; stops at the first record that
    does not verify (the files the suite damages are read before they are damaged)."""
    with open(path, "rb") as handle:
        data = handle.read()
    records = []
    if data[:4] != SEGMENT_MAGIC:
        return records
    offset = HEADER_SIZE
    while offset + RECORD_HEADER <= len(data):
        magic, kind, length, crc = struct.unpack_from("<IBII", data, offset)
        if magic != RECORD_MAGIC or offset + RECORD_HEADER + length > len(data):
            break
        payload_start = offset + RECORD_HEADER
        payload = data[payload_start:payload_start + length]
        valid = zlib.crc32(payload, zlib.crc32(bytes([kind]))) == crc
        record = Record(path, offset, kind, length, valid)
        if not valid:
            records.append(record)
            break
        cursor = _Cursor(data, payload_start)
        if kind == CHUNK:
            record.chunk_id = cursor.u64()
            record.rows = struct.unpack("<q", cursor.take(8))[0]
            cursor.u8()  # flags
            cursor.optional(cursor.text)  # user
            cursor.optional(cursor.raw)  # password: skipped, never kept
            record.database = cursor.optional(cursor.text)
            record.table = cursor.text()
            if cursor.u8() == 1:
                for _ in range(cursor.u32()):
                    cursor.text()
            record.format = cursor.text()
            cursor.optional(cursor.raw)  # header
            for _ in range(cursor.u32()):
                cursor.text()
                cursor.text()
            record.data_length = cursor.u32()
            record.data_offset = cursor.offset
            chunk_data = cursor.take(record.data_length)
            if record.format == "Values":
                record.ids = [int(match) for match in VALUES_ID.findall(chunk_data)]
        elif kind == DELIVERED:
            for _ in range(cursor.u32()):
                record.delivered.append((cursor.u64(), cursor.u64()))
        records.append(record)
        offset = record.end
    return records


def read_spool(directory):
    records = []
    for path in segment_files(directory):
        records += read_segment(path)
    return records


def undelivered_chunks(records):
    delivered = []
    for record in records:
        delivered += record.delivered
    return [
        record for record in records
        if record.kind == CHUNK and record.valid
        and not any(first <= record.chunk_id <= last for first, last in delivered)
    ]


def main():
    for record in read_spool(sys.argv[1]):
        print(record, record.table, record.ids[:3], "..." if len(record.ids) > 3 else "")


if __name__ == "__main__":
    main()
