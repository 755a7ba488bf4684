// Package nbd serves backups as NBD exports and reads NBD disks.
//
// # What comes from go-nbd and what is ours
//
// From github.com/pojntfx/go-nbd v0.3.2 we take its protocol package: the
// negotiation and transmission magics, option and reply codes and header
// layouts (see protocol.go). Its server (pkg/server) does not fit an
// appliance: it serves one request at a time per connection, writes a
// read's success header before calling ReadAt (so a failed read drops the
// connection instead of answering EIO), never sets READ_ONLY, and offers
// no FLUSH, FUA, TRIM, WRITE_ZEROES, structured replies or block status.
// Its client drives only the kernel's /dev/nbdX, which these machines do
// not have. So this package has its own:
//
//   - ExportServer: fixed-newstyle negotiation (EXPORT_NAME, LIST, INFO, GO,
//     STRUCTURED_REPLY, LIST/SET_META_CONTEXT with base:allocation, ABORT)
//     and a transmission loop that reads requests in order and answers up
//     to 32 at once, out of order by cookie. Errors become NBD error
//     replies in one place (ExportServer.errno): damaged backup data is EIO,
//     never bytes. Reads and block status use structured replies when
//     negotiated. Option data over 64 KiB, writes over 32 MiB and bad
//     magics end the connection; everything else gets an error reply and
//     the connection goes on.
//   - Client: a userspace client with many requests in flight on one
//     connection (32 by default), used for NBD disk sources and by the
//     tests. It negotiates structured replies and meta contexts
//     (base:allocation and any asked for, such as QEMU's
//     qemu:dirty-bitmap:NAME), reassembles reads from data and hole
//     chunks, and answers BlockStatus; against a server without
//     structured replies (go-nbd's) it reads with simple replies and
//     reports no block status. Once the connection breaks, every request
//     fails with ErrConnectionLost, which never matches io.EOF: ReadAt's
//     io.EOF means the end of the export, and readers keep what they
//     read before it (a dead VM's disk must not read as zeroes).
//
// How the server spends its time. A read that the device can answer
// from its caches without loading anything (CachedReader: the block
// cache, an attached export's read cache file, an instant restore's
// hydrated blocks) is answered by the goroutine that reads requests, as
// qemu-nbd answers with a pread; everything else goes to the
// connection's workers, which live as long as the connection (no
// goroutine and stack growth per request). Replies are queued and sent
// by whichever goroutine finds no send in progress, many per writev, the
// data straight from its buffer (no copy into a write buffer); the
// request reader sends what it answered itself before it waits for more
// requests. Read and write buffers come from size-class pools and are
// taken from the daemon's memory budget (ExportServer.Memory) before use, so
// many clients wait for each other instead of growing memory; one
// connection holds at most ExportServer.MaxConnMemory of it, taken in order;
// a client that does not read its replies for two minutes is
// disconnected.
// CACHE is advertised only for devices that implement Cacher, TRIM only
// for writable devices that implement Trimmer.
//
// Devices implement small interfaces: Device (ReaderAt + Size),
// WritableDevice (+ WriterAt + Flush), and optionally Zeroer, Trimmer,
// Cacher, CachedReader, ContextReaderAt and Extenter (allocation for
// block status).
package nbd
