// Package access decides which host paths an API caller may name: disk
// sources (image files, block devices, the sockets of nbd+unix URIs),
// restore targets, and mount and browse paths, plus the nbd:// servers a
// disk may be read from. It is the one place of that rule.
//
// The model: host access is the admin's grant, not a project's right.
//
//   - Nobody may name the appliance's own data (the data dir and
//     everything below it, the API and NBD sockets): restoring over the
//     store, reading the admin token or mounting over a socket would
//     destroy or leak every project's backups.
//   - sources.allowed_dirs, when set, restricts every caller's disk
//     source paths (not NBD URIs), as it always has.
//   - The admin token may name any other path and any NBD server.
//   - A project token may name only paths below the directories granted
//     for its use, globally or to its project by name, and only nbd://
//     hosts listed for it. Nothing is granted by default.
//
// Every decision is taken on the real path, with each symlink resolved:
// a symlink inside a granted directory that points outside is refused,
// and so is a restore target whose directory is a symlink into the data
// dir. Callers check twice: when the request names the path (Resolve,
// then CheckPath, so the caller hears at once) and when the job opens it
// (CheckPath on the path the kernel reports for the open file), because
// a path may have been swapped for a symlink in between.
//
// Checks fail closed: a path that is not absolute, or that cannot be
// resolved, is refused.
package access
