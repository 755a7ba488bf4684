package nbd

import "github.com/pojntfx/go-nbd/pkg/protocol"

// Constants from go-nbd's protocol package, renamed for this package, and
// the parts of the NBD protocol (doc/proto.md of the NBD project) that
// go-nbd v0.3.2 does not define: structured replies, meta contexts, block
// status, flush/trim/write-zeroes and the transmission flags.
const (
	magicNBD       = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOption    = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicRepOpt    = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest   = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimple    = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructRep = uint32(0x668e33ef)

	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)
	clientFixed       = uint32(1 << 0)
	clientNoZeroes    = uint32(1 << 1)

	optExportName   = uint32(1)
	optAbort        = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList         = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS     = uint32(5)
	optInfo         = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo           = protocol.NEGOTIATION_ID_OPTION_GO
	optStructured   = uint32(8)
	optListMetaCtx  = uint32(9)
	optSetMetaCtx   = uint32(10)
	repAck          = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer       = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo         = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext  = uint32(4)
	repErrUnsup     = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy    = uint32(2 | 1<<31)
	repErrInvalid   = uint32(3 | 1<<31)
	repErrTooBig    = uint32(9 | 1<<31)
	repErrUnknown   = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE

	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)

	cmdFlagFUA     = uint16(1 << 0)
	cmdFlagNoHole  = uint16(1 << 1)
	cmdFlagDF      = uint16(1 << 2)
	cmdFlagReqOne  = uint16(1 << 3)
	cmdFlagFastZ   = uint16(1 << 4)
	tflagHasFlags  = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tflagReadOnly  = uint16(1 << 1)
	tflagFlush     = uint16(1 << 2)
	tflagFUA       = uint16(1 << 3)
	tflagTrim      = uint16(1 << 5)
	tflagZeroes    = uint16(1 << 6)
	tflagDF        = uint16(1 << 7)
	tflagMultiConn = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	tflagCache     = uint16(1 << 10)

	replyFlagDone     = uint16(1 << 0)
	chunkNone         = uint16(0)
	chunkOffsetData   = uint16(1)
	chunkOffsetHole   = uint16(2)
	chunkBlockStatus  = uint16(5)
	chunkError        = uint16(1<<15 | 1)
	chunkErrorOffset  = uint16(1<<15 | 2)
	stateHole         = uint32(1 << 0)
	stateZero         = uint32(1 << 1)
	metaBaseAlloc     = "base:allocation"
	metaBaseAllocID   = uint32(1)
	errPerm           = protocol.TRANSMISSION_ERROR_EPERM
	errIO             = uint32(5)
	errNoMem          = uint32(12)
	errInval          = protocol.TRANSMISSION_ERROR_EINVAL
	errNoSpc          = uint32(28)
	errOverflow       = uint32(75)
	errNotSup         = uint32(95)
	errShutdown       = uint32(108)
	maxOptionLength   = 64 << 10
	maxPayload        = 32 << 20 // largest read or write accepted
	maxInFlight       = 32       // requests served at once per connection
	defaultMinBlock   = 1
	defaultPrefBlock  = 64 << 10
	defaultMaxPayload = maxPayload
)
