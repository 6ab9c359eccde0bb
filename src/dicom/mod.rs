//! DICOM: networking (the SCP that receives series), the durable instance store, and the small
//! pieces of the standard kneenode reads and writes itself (DIMSE command sets, Part-10 headers).

mod access;
pub mod codes;
pub mod dimse;
pub mod dispatch;
pub mod part10;
pub mod routing;
pub mod scp;
pub mod scu;
pub mod seg;
pub mod series;
pub mod sr;
pub mod store;
pub mod tls;
pub mod uid;
pub mod uids;
pub mod write;
pub mod write_enhanced;
