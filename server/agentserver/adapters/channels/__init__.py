"""Channel adapters: how an action reaches the world.

Real adapters, one module each (import them from their modules; they pull in their
provider libraries, which a zero-config server never needs):

* `smtp.SmtpEmailChannel` (aiosmtplib, per-tenant SMTP server)
* `twilio_messaging.TwilioSmsChannel`, `twilio_messaging.TwilioWhatsAppChannel`
* `elevenlabs.ElevenLabsCallChannel` (pending calls, with `poll`)

Always available from here: the dry-run twins, the pending-call types and the retry
helper.
"""

from agentserver.adapters.channels.dryrun import DryRunCallChannel, DryRunChannel
from agentserver.adapters.channels.polling import CallStatus, PollableChannel
from agentserver.adapters.channels.retry import with_retries

__all__ = [
    "CallStatus",
    "DryRunCallChannel",
    "DryRunChannel",
    "PollableChannel",
    "with_retries",
]
