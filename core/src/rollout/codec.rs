//! CBOR helpers for fields whose types have no `Encode`/`Decode` of their own.

/// A [`core::time::Duration`] as whole milliseconds (an unsigned integer).
pub(crate) mod duration {
    use core::time::Duration;

    use minicbor::decode::{self, Decoder};
    use minicbor::encode::{self, Encoder, Write};

    use crate::time::duration_millis;

    pub(crate) fn encode<C, W: Write>(
        d: &Duration,
        e: &mut Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.u64(duration_millis(*d))?;
        Ok(())
    }

    pub(crate) fn decode<C>(d: &mut Decoder<'_>, _ctx: &mut C) -> Result<Duration, decode::Error> {
        Ok(Duration::from_millis(d.u64()?))
    }
}

/// A [`crate::wire::DeviceId`] as a text string, validated when decoded.
pub(crate) mod device_id {
    use minicbor::decode::{self, Decoder};
    use minicbor::encode::{self, Encoder, Write};

    use crate::wire::DeviceId;

    pub(crate) fn encode<C, W: Write>(
        id: &DeviceId,
        e: &mut Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.str(id.as_str())?;
        Ok(())
    }

    pub(crate) fn decode<C>(d: &mut Decoder<'_>, _ctx: &mut C) -> Result<DeviceId, decode::Error> {
        DeviceId::new(d.str()?).map_err(|_| decode::Error::message("invalid device id"))
    }
}
