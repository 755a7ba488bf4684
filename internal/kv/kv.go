// Package kv is the one database that the block store's index and the
// catalog share, so that a backup's block maps and its catalog record
// commit in one transaction. It is an opaque handle around Badger: other
// packages pass a DB or a Txn from one to the other, and only blockstore
// and catalog, which own the keys they write, unwrap it.
package kv

import "github.com/dgraph-io/badger/v4"

// DB is the shared database.
type DB struct{ b *badger.DB }

// New wraps an open Badger database (blockstore opens it).
func New(b *badger.DB) *DB { return &DB{b} }

// Badger returns the database, for blockstore and catalog.
func (d *DB) Badger() *badger.DB { return d.b }

// Txn is one transaction of the shared database.
type Txn struct{ t *badger.Txn }

// NewTxn wraps a Badger transaction.
func NewTxn(t *badger.Txn) *Txn { return &Txn{t} }

// Badger returns the transaction, for blockstore and catalog.
func (t *Txn) Badger() *badger.Txn { return t.t }
