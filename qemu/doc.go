// Package qemu backs up running QEMU VMs at a point in time. It speaks
// QMP (JSON over the VM's monitor socket) and the guest agent protocol
// itself (both are small), and drives QEMU's own image fleecing:
//
//  1. per disk, an empty qcow2 overlay in the session dir, created by
//     QEMU (blockdev-create) and added with the disk's node as backing;
//  2. the guest agent, if it answers, freezes the file systems;
//  3. one QMP transaction for all disks fixes the point in time: a new
//     dirty bitmap per disk (persistent on qcow2: it survives a VM
//     restart), a disabled copy of the parent backup's bitmap (exactly
//     the changes between the parent's point in time and this one), and
//     a blockdev-backup sync=none job per disk whose copy-before-write
//     filter saves old data to the overlay before a guest write lands;
//  4. the agent thaws the guest (the freeze lasts one transaction);
//  5. QEMU's NBD server on a unix socket in the session dir exports each
//     overlay (the disk as it was at the point in time) with the changed
//     bitmap as the meta context qemu:dirty-bitmap:NAME;
//  6. End removes exports, server, jobs, overlays and bitmap copies, and
//     then the parent's bitmap (backup saved) or the new one (not saved).
//
// What was added is recorded in the session dir before each step, so
// Recover undoes it after a crash of csbs. The guest runs on throughout;
// it sees only the copy-before-write I/O.
//
// Caveats: QEMU allows one NBD server per VM (a VM whose NBD server is in
// use, e.g. by a migration, cannot be backed up meanwhile), and its QMP
// socket serves one client at a time (give csbs its own -qmp socket).
// Zero-extent reports from the fleecing export are double-checked by the
// reader (see source.NBD.NextData).
package qemu
