package blockstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/dgraph-io/badger/v4"
	"github.com/zeebo/blake3"
)

// Format "1" (csbs before packs) kept every block value (b/<hash>) and
// every map segment (s/<map><seg>) in Badger's value log, whose space
// never reliably came back. Open upgrades such a store by building a
// format "2" store beside it (<dir>.upgrade: blocks into packs, segments
// into map files, catalog and headers copied), then swapping the two
// directories. A crash at any point leaves either the old store intact
// or the new one complete; the next Open finishes or restarts the job.
const (
	legacyFormat        = "1"
	legacyPrefixBlock   = "b/"
	legacyPrefixSegment = "s/"
)

func migrateIfNeeded(dir string, opts Options) error {
	upgrade, old := dir+".upgrade", dir+".old"
	// Finish a swap a crash interrupted.
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(upgrade); err == nil {
			if err := os.Rename(upgrade, dir); err != nil {
				return fmt.Errorf("finish store upgrade: %w", err)
			}
		}
	}
	os.RemoveAll(old)
	os.RemoveAll(upgrade)

	format, err := readFormat(dir, opts)
	if err != nil || format != legacyFormat {
		return err
	}
	opts.Logger.Warn("upgrading the store to format 2 (packs and map files); this reads every block once", "store", dir)
	if err := migrate(dir, upgrade, opts); err != nil {
		os.RemoveAll(upgrade)
		return fmt.Errorf("upgrade store from format 1: %w", err)
	}
	if err := os.Rename(dir, old); err != nil {
		return fmt.Errorf("upgrade store: %w", err)
	}
	if err := os.Rename(upgrade, dir); err != nil {
		return fmt.Errorf("upgrade store: %w", err)
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	os.RemoveAll(old)
	opts.Logger.Warn("store upgraded", "store", dir)
	return nil
}

// readFormat returns the store's format ("" for a new, empty directory).
func readFormat(dir string, opts Options) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "MANIFEST")); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	db, err := openBadger(dir, opts)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var f []byte
	err = db.View(func(txn *badger.Txn) error {
		f, err = getValue(txn, keyMetaFormat)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", nil
	}
	return string(f), err
}

func migrate(dir, upgrade string, opts Options) error {
	src, err := openBadger(dir, opts)
	if err != nil {
		return err
	}
	defer src.Close()
	var bs int
	err = src.View(func(txn *badger.Txn) error {
		v, err := getValue(txn, keyMetaBlockSize)
		if err != nil {
			return err
		}
		bs, err = strconv.Atoi(string(v))
		return err
	})
	if err != nil {
		return fmt.Errorf("read block size: %w", err)
	}
	opts.BlockSize = bs
	opts.Packs = nil
	dst, err := openCurrent(upgrade, opts)
	if err != nil {
		return err
	}
	defer dst.Close()
	ctx := context.Background()

	// Blocks into packs.
	var pw *packWriter
	defer func() {
		if pw != nil {
			pw.release()
		}
	}()
	err = src.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(legacyPrefixBlock), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var h Hash
			copy(h[:], it.Item().Key()[len(legacyPrefixBlock):])
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("block %s: %w", h, err)
			}
			if pw == nil {
				if pw, err = dst.newPackWriter(); err != nil {
					return err
				}
			}
			if _, err := pw.add(h, v); err != nil {
				return err
			}
			if pw.full() {
				p := pw
				pw = nil
				if _, err := dst.publishPack(ctx, p); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if pw != nil {
		p := pw
		pw = nil
		if _, err := dst.publishPack(ctx, p); err != nil {
			return err
		}
	}

	// Maps into map files, headers with their segment bitmaps; everything
	// else (the catalog) copied as it is.
	wb := dst.db.NewWriteBatch()
	defer wb.Cancel()
	err = src.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			switch {
			case bytes.HasPrefix(k, []byte(legacyPrefixBlock)), bytes.HasPrefix(k, []byte(legacyPrefixSegment)), bytes.HasPrefix(k, []byte("meta/")):
				continue
			case bytes.HasPrefix(k, []byte(prefixMap)):
				var id MapID
				copy(id[:], k[len(prefixMap):])
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				info, err := migrateMap(txn, dst, id, v)
				if err != nil {
					return fmt.Errorf("map %s: %w", id, err)
				}
				hv, err := json.Marshal(info)
				if err != nil {
					return err
				}
				if err := wb.Set(k, hv); err != nil {
					return err
				}
			default:
				v, err := it.Item().ValueCopy(nil)
				if err != nil {
					return err
				}
				if err := wb.Set(k, v); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := wb.Flush(); err != nil {
		return err
	}
	return dst.Sync()
}

// migrateMap writes the map file of a format-1 map from its segments.
func migrateMap(txn *badger.Txn, dst *Store, id MapID, header []byte) (MapInfo, error) {
	var info MapInfo
	if err := json.Unmarshal(header, &info); err != nil {
		return info, fmt.Errorf("decode header: %w", err)
	}
	info.ID = id
	mw, err := dst.createMap(id, info.Size)
	if err != nil {
		return info, err
	}
	prefix := append([]byte(legacyPrefixSegment), id[:]...)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		seg := int64(binary.BigEndian.Uint64(it.Item().Key()[len(prefix):]))
		var hs []Hash
		err := it.Item().Value(func(v []byte) error {
			var err error
			hs, err = decodeLegacySegment(v)
			return err
		})
		if err != nil {
			mw.abort()
			return info, fmt.Errorf("segment %d: %w", seg, err)
		}
		if n := segmentEntries(info.Blocks(), seg); len(hs) != n {
			mw.abort()
			return info, fmt.Errorf("segment %d holds %d hashes, want %d", seg, len(hs), n)
		}
		if err := mw.writeSegment(seg, hs); err != nil {
			mw.abort()
			return info, err
		}
	}
	if err := mw.finish(); err != nil {
		mw.abort()
		return info, err
	}
	info.Segments = mw.present
	return info, nil
}

// decodeLegacySegment parses a format-1 segment: hashes, then the first
// 16 bytes of their BLAKE3.
func decodeLegacySegment(v []byte) ([]Hash, error) {
	if len(v) < segmentChecksumSize {
		return nil, fmt.Errorf("segment of %d bytes", len(v))
	}
	body, sum := v[:len(v)-segmentChecksumSize], v[len(v)-segmentChecksumSize:]
	if len(body)%HashSize != 0 || len(body) == 0 || len(body)/HashSize > SegmentEntries {
		return nil, fmt.Errorf("segment body of %d bytes", len(body))
	}
	want := blake3.Sum256(body)
	if !bytes.Equal(want[:segmentChecksumSize], sum) {
		return nil, errors.New("segment checksum mismatch")
	}
	hs := make([]Hash, len(body)/HashSize)
	for i := range hs {
		copy(hs[i][:], body[i*HashSize:])
	}
	return hs, nil
}
