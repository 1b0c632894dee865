"""obstacle_classifier: on-robot multi-label obstacle classification in pure NumPy, for ROS 2.

The NumPy network (:mod:`obstacle_classifier.nn`), the feature pipeline and the offline tools
import no ROS; the ROS 2 nodes are thin glue around them.
"""

__version__ = '0.1.0'
