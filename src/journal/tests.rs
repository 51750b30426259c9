use std::os::fd::{AsFd, OwnedFd};

use proptest::prelude::*;

use super::*;

const ORIGIN: Origin = Origin {
    next_buffer_id: 7,
    next_attachment_id: 9,
    next_serial: 42,
};

fn batch(request: &[u8], end: End) -> Record {
    Record::Batch(BatchRecord {
        request: request.to_vec(),
        writable_len: 4096,
        end,
        chain: Some((3, 17)),
        used_len: 24,
    })
}

/// What another process holding the fd would see.
fn reopen(journal: &Journal) -> OwnedFd {
    journal.as_fd().try_clone_to_owned().unwrap()
}

fn file_of(fd: &OwnedFd) -> File {
    File::from(fd.try_clone().unwrap())
}

#[test]
fn records_come_back_in_order_with_the_origin() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    let records = vec![
        batch(
            b"first",
            End::Answered {
                status: 0,
                num_done: 2,
            },
        ),
        Record::EventPopped,
        Record::Answer {
            chain: (65535, 3),
            used_len: 40,
        },
        batch(
            b"",
            End::Abandoned {
                completed: 1,
                pending: true,
            },
        ),
        Record::Batch(BatchRecord {
            request: vec![0xa5; 300],
            writable_len: 0,
            end: End::Answered {
                status: -22,
                num_done: 0,
            },
            chain: None,
            used_len: 0,
        }),
    ];
    for record in &records {
        journal.append(record).unwrap();
    }
    let (adopted, origin, read) = Journal::adopt(reopen(&journal), DEFAULT_LIMIT).unwrap();
    assert_eq!(origin, ORIGIN);
    assert_eq!(read, records);
    assert_eq!(adopted.len(), journal.len());
}

#[test]
fn a_record_written_but_not_committed_is_not_read() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    journal.append(&Record::EventPopped).unwrap();
    let committed = journal.len();
    // What a process killed between its two writes leaves: the record's
    // bytes past the committed end.
    let mut torn = Vec::new();
    encode(
        &batch(
            b"torn",
            End::Answered {
                status: 0,
                num_done: 1,
            },
        ),
        &mut torn,
    );
    journal.file.write_all_at(&torn, committed).unwrap();
    let (mut adopted, _, read) = Journal::adopt(reopen(&journal), DEFAULT_LIMIT).unwrap();
    assert_eq!(read, vec![Record::EventPopped]);
    // The successor appends over the torn bytes.
    adopted.append(&Record::EventPopped).unwrap();
    let (_, _, read) = Journal::adopt(reopen(&adopted), DEFAULT_LIMIT).unwrap();
    assert_eq!(read, vec![Record::EventPopped, Record::EventPopped]);
}

#[test]
fn a_restart_drops_every_record_and_keeps_the_new_origin() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    for _ in 0..100 {
        journal
            .append(&batch(
                &[1; 64],
                End::Answered {
                    status: 0,
                    num_done: 1,
                },
            ))
            .unwrap();
    }
    let later = Origin {
        next_buffer_id: 100,
        next_attachment_id: 200,
        next_serial: 300,
    };
    journal.restart(later).unwrap();
    assert!(journal.is_empty());
    let fd = reopen(&journal);
    assert_eq!(file_of(&fd).metadata().unwrap().len(), HEADER_LEN);
    let (_, origin, read) = Journal::adopt(fd, DEFAULT_LIMIT).unwrap();
    assert_eq!((origin, read), (later, vec![]));
}

#[test]
fn the_limit_refuses_a_record_and_commits_nothing() {
    let mut journal = Journal::create(ORIGIN, HEADER_LEN + 4096).unwrap();
    let big = batch(
        &[0; 2000],
        End::Answered {
            status: 0,
            num_done: 1,
        },
    );
    journal.append(&big).unwrap();
    journal.append(&big).unwrap();
    let before = journal.len();
    assert!(matches!(journal.append(&big), Err(Error::Full(_))));
    assert_eq!(journal.len(), before);
    let (_, _, read) = Journal::adopt(reopen(&journal), HEADER_LEN + 4096).unwrap();
    assert_eq!(read.len(), 2);
}

#[test]
fn a_journal_marked_broken_is_not_adopted() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    journal.append(&Record::EventPopped).unwrap();
    journal.mark_broken();
    assert!(matches!(
        Journal::adopt(reopen(&journal), DEFAULT_LIMIT),
        Err(Error::Broken)
    ));
}

#[test]
fn bad_headers_are_refused() {
    let journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    let fd = reopen(&journal);
    let file = file_of(&fd);
    // A committed end past the file.
    file.write_all_at(&(1u64 << 40).to_le_bytes(), COMMITTED_AT)
        .unwrap();
    assert!(matches!(
        Journal::adopt(reopen(&journal), DEFAULT_LIMIT),
        Err(Error::BadCommitted { .. })
    ));
    // A committed end inside the header.
    file.write_all_at(&8u64.to_le_bytes(), COMMITTED_AT)
        .unwrap();
    assert!(matches!(
        Journal::adopt(reopen(&journal), DEFAULT_LIMIT),
        Err(Error::BadCommitted { .. })
    ));
    file.write_all_at(&HEADER_LEN.to_le_bytes(), COMMITTED_AT)
        .unwrap();
    file.write_all_at(&2u32.to_le_bytes(), VERSION_AT).unwrap();
    assert!(matches!(
        Journal::adopt(reopen(&journal), DEFAULT_LIMIT),
        Err(Error::BadVersion(2))
    ));
    file.write_all_at(b"notajrnl", 0).unwrap();
    assert!(matches!(
        Journal::adopt(reopen(&journal), DEFAULT_LIMIT),
        Err(Error::BadMagic)
    ));
}

#[test]
fn a_record_running_past_the_committed_end_is_refused() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    journal
        .append(&batch(
            b"12345678",
            End::Answered {
                status: 0,
                num_done: 1,
            },
        ))
        .unwrap();
    // Commit one byte less than the record.
    let cut = journal.len() - 1;
    journal.commit(cut).unwrap();
    assert!(matches!(
        Journal::adopt(reopen(&journal), DEFAULT_LIMIT),
        Err(Error::BadRecord { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever bytes follow a valid header, adopting gives records or an
    /// error, never a panic; and what encodes decodes to itself.
    #[test]
    fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
        journal.file.write_all_at(&bytes, HEADER_LEN).unwrap();
        journal.file
            .write_all_at(&(HEADER_LEN + bytes.len() as u64).to_le_bytes(), COMMITTED_AT)
            .unwrap();
        let _ = Journal::adopt(reopen(&journal), DEFAULT_LIMIT);
    }

    #[test]
    fn encoding_round_trips(
        request in proptest::collection::vec(any::<u8>(), 0..256),
        writable_len in any::<u32>(),
        answered in any::<bool>(),
        a in any::<u32>(),
        b in any::<u32>(),
        chain in proptest::option::of(any::<(u16, u16)>()),
        used_len in any::<u32>(),
    ) {
        let end = if answered {
            End::Answered { status: a as i32, num_done: b }
        } else {
            End::Abandoned { completed: a, pending: b % 2 == 1 }
        };
        let record = Record::Batch(BatchRecord { request, writable_len, end, chain, used_len });
        let mut bytes = Vec::new();
        encode(&record, &mut bytes);
        prop_assert_eq!(decode(&bytes, HEADER_LEN).unwrap(), vec![record]);
    }
}

#[test]
fn the_last_answer_is_the_last_answered_batch_with_a_chain() {
    let answered = |position: u16, used_len: u32| {
        Record::Batch(BatchRecord {
            request: vec![],
            writable_len: 64,
            end: End::Answered {
                status: 0,
                num_done: 1,
            },
            chain: Some((position, 7)),
            used_len,
        })
    };
    assert_eq!(last_answer(&[]), None);
    assert_eq!(
        last_answer(&[answered(1, 8), answered(2, 16), Record::EventPopped]),
        Some((2, 7, 16))
    );
    let abandoned = batch(
        b"",
        End::Abandoned {
            completed: 0,
            pending: true,
        },
    );
    assert_eq!(last_answer(&[answered(1, 8), abandoned]), None);
    let marker = Record::Answer {
        chain: (9, 1),
        used_len: 24,
    };
    assert_eq!(
        last_answer(&[marker, Record::EventPopped]),
        Some((9, 1, 24))
    );
}

fn image(answer: Option<(u16, u16, u32)>, state: &[u8]) -> Record {
    Record::Image {
        answer,
        state: state.to_vec(),
    }
}

#[test]
fn a_compaction_leaves_the_image_then_what_follows() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    for _ in 0..50 {
        journal
            .append(&batch(
                &[7; 100],
                End::Answered {
                    status: 0,
                    num_done: 1,
                },
            ))
            .unwrap();
    }
    let snapshot = image(Some((9, 2, 48)), b"{\"state\":1}");
    journal.compact(snapshot.clone()).unwrap();
    journal.append(&Record::EventPopped).unwrap();
    let (_, origin, read) = Journal::adopt(reopen(&journal), DEFAULT_LIMIT).unwrap();
    assert_eq!(origin, ORIGIN);
    assert_eq!(read, vec![snapshot, Record::EventPopped]);
    assert_eq!(last_answer(&read), Some((9, 2, 48)));
    // The old records' memory went back: the file holds about the image.
    let fd = reopen(&journal);
    // SAFETY: fstat into a zeroed stat.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an open descriptor, valid out pointer.
    assert_eq!(
        unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut stat) },
        0
    );
    assert!(
        stat.st_blocks * 512 <= 3 * 4096,
        "{} blocks",
        stat.st_blocks
    );
}

#[test]
fn a_compaction_cut_short_leaves_the_old_records() {
    let mut journal = Journal::create(ORIGIN, DEFAULT_LIMIT).unwrap();
    let record = batch(
        b"kept",
        End::Answered {
            status: 0,
            num_done: 1,
        },
    );
    journal.append(&record).unwrap();
    // The image written past the end, the header not switched yet.
    let mut bytes = Vec::new();
    encode(&image(None, b"{}"), &mut bytes);
    journal.file.write_all_at(&bytes, journal.len()).unwrap();
    let (_, _, read) = Journal::adopt(reopen(&journal), DEFAULT_LIMIT).unwrap();
    assert_eq!(read, vec![record]);
}

#[test]
fn the_limit_counts_the_records_since_the_last_compaction() {
    let limit = 4096;
    let mut journal = Journal::create(ORIGIN, limit).unwrap();
    let record = batch(
        &[0; 1000],
        End::Answered {
            status: 0,
            num_done: 1,
        },
    );
    for _ in 0..10 {
        while journal.append(&record).is_ok() {}
        journal.compact(image(None, b"{}")).unwrap();
        assert!(journal.records_len() < 100);
    }
    let (_, _, read) = Journal::adopt(reopen(&journal), limit).unwrap();
    assert_eq!(read, vec![image(None, b"{}")]);
}
