import Testing

@testable import BatchhouseCore

@Suite struct SessionStatementsTests {
    private func alone(_ text: String, complete: Bool = true) -> Bool? {
        SessionStatements.leavesStateAlone(Array(text.utf8), isComplete: complete)
    }

    @Test func readsInsertsAndDDLLeaveASessionAlone() {
        for text in [
            "SELECT 1", "  /* c */ select 1", "-- c\nWITH 1 AS x SELECT x", "(SELECT 1)", "DESCRIBE TABLE t",
            "INSERT INTO t VALUES (1)", "SHOW TABLES", "CREATE TABLE t (x UInt8) ENGINE = Memory", "DROP TABLE t",
        ] {
            #expect(alone(text) == true, "\(text)")
        }
    }

    @Test func setUseAndTemporaryTablesChangeIt() {
        for text in [
            "SET max_threads = 1", "USE db", "CREATE TEMPORARY TABLE t (x UInt8)", "drop temporary table t",
            "SYSTEM DROP DNS CACHE", "", "   ",
        ] {
            #expect(alone(text) == false, "\(text)")
        }
    }

    @Test func aStatementCutBeforeItsFirstWordEndsIsNotJudged() {
        #expect(alone("SEL", complete: false) == nil)
        #expect(alone("  /* unfinished", complete: false) == nil)
        #expect(alone("CREATE ", complete: false) == nil)
        #expect(alone("SELECT ", complete: false) == true)
    }

    @Test func statementsThatReadNoRowsNeedNoBatchToLand() {
        for text in ["DESCRIBE TABLE default.t\n FORMAT Native", "desc t", "SHOW CREATE TABLE t", "EXISTS t", "SET a = 1"] {
            #expect(SessionStatements.seesNoRows(Array(text.utf8)), "\(text)")
        }
        for text in ["SELECT count() FROM t", "DROP TABLE t", "TRUNCATE t", "OPTIMIZE TABLE t", "DESC", ""] {
            #expect(!SessionStatements.seesNoRows(Array(text.utf8)), "\(text)")
        }
    }
}
