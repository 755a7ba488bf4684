// Package mounts shows backups as files. Tree is the read-only FUSE tree
// /<project>/<server>/<backup>/<disk>.img of the catalog's available
// Enhanced backups, served by fusefs; Manager keeps the mounts of it
// (csbs mount, and the config's fuse.mountpoint) with their catalog
// records, so that a restarted daemon cleans what a crash left and
// mounts them again; and browse loop-mounts one disk image of a backup
// read-only (losetup, mount) so that single files can be copied out.
//
// The tree reads the catalog's mount index (catalog.MountServers,
// MountBackups, MountBackup): a lookup reads one index entry or a few,
// a listing what it shows, never the project's backups. Each mount
// watches the catalog (catalog.WatchMounts) and turns every commit that
// changes the tree (a backup created, deleted or failed, a project
// created or removed) into fusefs.Mount.Invalidate calls, which drop the
// cached listings and tell the kernel; so listings are cached per
// directory, and `ls -R` of thousands of backups costs about one
// listing. When the watch cannot start, a mount works uncached.
//
// The package sees the catalog through Catalog and backup disks through
// Disks, and checks host paths through Access, so that it is tested
// with a real catalog and real FUSE mounts but without a daemon.
package mounts
