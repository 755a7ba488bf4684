package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// FuzzServer is a fuzzed client talking to a real in-process server over a
// pipe: handshake, then arbitrary option and transmission bytes. The server
// must neither panic nor hang.
func FuzzServer(f *testing.F) {
	be := binary.BigEndian
	f.Add(append(be.AppendUint32(nil, clientFixed|clientNoZeroes), goOption("mem")...))
	withRead := append(be.AppendUint32(nil, clientFixed), goOption("mem")...)
	f.Add(append(withRead, rawRequest(cmdRead, 1, 0, 512)...))
	f.Add(append(withRead, rawRequest(cmdWrite, 2, 100, 4)...))
	f.Add(append(be.AppendUint32(nil, clientFixed), option(optList, nil)...))
	f.Add(append(be.AppendUint32(nil, clientFixed), option(optSetMetaCtx, []byte{0, 0, 0, 3, 'm', 'e', 'm', 0, 0, 0, 1, 0, 0, 0, 15})...))
	f.Fuzz(func(t *testing.T, input []byte) {
		mem := &memDevice{b: make([]byte, 64<<10)}
		srv := &ExportServer{Exports: staticExports{"mem": {Name: "mem", Device: mem}, "ro": {Name: "ro", Device: mem, ReadOnly: true}}, Log: slog.New(slog.DiscardHandler), AllowList: true}
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveConn(context.Background(), server)
			server.Close()
		}()
		go io.Copy(io.Discard, client)
		client.SetDeadline(time.Now().Add(2 * time.Second))
		client.Write(input)
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("server did not end the connection")
		}
	})
}
