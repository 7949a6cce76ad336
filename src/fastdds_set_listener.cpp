// Fast DDS 2.x: DomainParticipant::set_listener(listener, timeout) with a deadline that can be waited for.
//
// rmw_fastrtps deletes a node's DDS participant by first calling set_listener(nullptr), which waits until no
// discovery callback runs. Its default timeout, std::chrono::seconds::max(), makes a steady-clock deadline that
// overflows when libstdc++ converts it to the system clock, so every wait returns at once: the deleting thread
// re-takes the participant's callback mutex in a tight loop, and a receive thread inside a discovery callback
// (another node leaving at the same moment) starves on that mutex. Seen as nodes that did not stop for 10 s or
// more on a loaded machine. Here the same wait has a finite deadline (a day): a blocking wait, so the callback
// can finish. sop_ros/robot/fastdds_fix.py loads this library before Fast DDS, so that this definition binds
// the calls of rmw_fastrtps and of Fast DDS's own set_listener(listener).

#include <algorithm>
#include <chrono>

#include <fastdds/dds/domain/DomainParticipant.hpp>

namespace eprosima
{
namespace fastdds
{
namespace dds
{

ReturnCode_t DomainParticipant::set_listener(DomainParticipantListener * listener, const std::chrono::seconds timeout)
{
  constexpr std::chrono::seconds longest{24 * 3600};
  return set_listener(listener, StatusMask::all(), std::min(timeout, longest));
}

}  // namespace dds
}  // namespace fastdds
}  // namespace eprosima
